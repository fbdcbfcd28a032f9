package bpf

//go:generate go tool bpf2go -tags linux -target amd64,arm64 -type stack_key -type count_val -type user_stack Profile profile.c -- -I./headers
