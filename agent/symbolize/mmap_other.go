//go:build !linux

package symbolize

import (
	"fmt"
	"os"
)

func mapFile(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}

func unmapFile([]byte) {}

func manageObject(*object) {}

func dropPages([]byte, int, int) {}
