// Package symbolize turns sampled instruction pointers into function names:
// kernel frames from kallsyms, user frames from ELF symbols and Go pclntab.
package symbolize
