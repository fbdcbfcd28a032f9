//go:build !linux

package symbolize

import (
	"errors"
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

var errNoProcmapQuery = errors.New("PROCMAP_QUERY not supported")

func queryExecMappings(*os.File, []byte) ([]*Mapping, error) { return nil, errNoProcmapQuery }
