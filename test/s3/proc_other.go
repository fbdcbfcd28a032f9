//go:build !linux

package s3

import "syscall"

func procAttr() *syscall.SysProcAttr { return nil }
