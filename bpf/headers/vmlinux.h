/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Minimal hand-written subset of vmlinux.h: only the types profile.c uses.
 * The kernel structs profile.c reads (task_struct, pt_regs) carry
 * __attribute__((preserve_access_index)) (CO-RE), so the object needs the
 * running kernel's BTF; so does bpf_get_current_task_btf. */
#ifndef __VMLINUX_MIN_H__
#define __VMLINUX_MIN_H__

typedef unsigned char __u8;
typedef short int __s16;
typedef short unsigned int __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long int __s64;
typedef long long unsigned int __u64;
typedef __u8 u8;
typedef __s16 s16;
typedef __u16 u16;
typedef __s32 s32;
typedef __u32 u32;
typedef __s64 s64;
typedef __u64 u64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef _Bool bool;
enum { false = 0, true = 1 };

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_STACK_TRACE = 7,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_RINGBUF = 27,
};

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

enum {
	BPF_F_SKIP_FIELD_MASK = 255,
	BPF_F_USER_STACK = 256,
	BPF_F_FAST_STACK_CMP = 512,
	BPF_F_REUSE_STACKID = 1024,
	BPF_F_USER_BUILD_ID = 2048,
};

/* Registers of the interrupted context (UAPI bpf_user_pt_regs_t; its
 * layout is fixed per architecture, and ctx reads of it are rewritten by
 * the verifier, so no CO-RE is needed). */
#if defined(__TARGET_ARCH_x86)
struct bpf_user_pt_regs {
	/* struct pt_regs of x86-64 (UAPI for BPF and ptrace). */
	__u64 r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di;
	__u64 orig_ax, ip;
	__u64 cs; /* low two bits: the privilege level */
	__u64 flags, sp, ss;
};
#define USER_MODE(regs) (((regs)->cs & 3) == 3)
#elif defined(__TARGET_ARCH_arm64)
struct bpf_user_pt_regs {
	/* struct user_pt_regs; pstate bits 0-3: the exception level. */
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
};
#define USER_MODE(regs) (((regs)->pstate & 0xf) == 0)
#else
#error "profile.c: unsupported target architecture"
#endif

/* Kernel structs read through BTF pointers (CO-RE: field offsets are
 * relocated against the running kernel's BTF when the object loads). Only
 * the fields profile.c reads. */
#if defined(__TARGET_ARCH_x86)
struct pt_regs {
	unsigned long bp;
	unsigned long ip;
	/* A u16 in a union since FRED (6.9), an unsigned long before: a
	 * 2-byte load of its start is right on both (little endian). */
	unsigned short cs;
	unsigned long sp;
} __attribute__((preserve_access_index));
#elif defined(__TARGET_ARCH_arm64)
struct pt_regs {
	/* In an anonymous union/struct in the kernel; CO-RE finds them
	 * by name. */
	__u64 regs[31];
	__u64 sp;
	__u64 pc;
	__u64 pstate;
} __attribute__((preserve_access_index));
#endif

struct task_struct {
	unsigned int flags;
} __attribute__((preserve_access_index));

/* Context of perf_event programs. */
struct bpf_perf_event_data {
	struct bpf_user_pt_regs regs;
	__u64 sample_period;
	__u64 addr;
};

/* Context of raw tracepoint programs. */
struct bpf_raw_tracepoint_args {
	__u64 args[0];
};

#endif /* __VMLINUX_MIN_H__ */
