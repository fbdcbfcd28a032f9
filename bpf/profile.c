//go:build ignore

// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* fleetprof CPU sampler.
 *
 * A perf_event program runs on every CPU at the sampling frequency. It
 * counts samples keyed by {pid, tid, user stack hash, kernel stack id}
 * (the thread's name is stored with the count when the key is first seen)
 * in one of two slots (counts0/ustacks0/stacks0 or counts1/ustacks1/stacks1);
 * user space flips the active slot at each window boundary and drains the
 * idle one, so no sample of the window in progress is lost or mixed with
 * the next window.
 *
 * Kernel stacks are walked by the kernel (bpf_get_stackid: ORC or frame
 * pointers, no user memory touched). User stacks are walked here, by frame
 * pointers, and stored in a hash map keyed by a hash of the addresses. The
 * kernel's own user walker (bpf_get_stackid with BPF_F_USER_STACK) stops
 * only when a read fails: every walk ends with a kernel page fault at the
 * last frame pointer (0 at the outermost frame), handled by the exception
 * fixup path, which costs microseconds per sample. walk_user stops before
 * reading anything that cannot be a frame record.
 *
 * A pid seen for the first time is announced on the new_pids ring buffer so
 * user space can snapshot its mappings before it exits; exec forgets the pid
 * so the new image is announced again. */
#include "vmlinux.h"
#include "bpf_helpers.h"

#define MAX_STACK_DEPTH 127
#define E2BIG 7
#define EEXIST 17
#define ENOMEM 12

/* Frame records of one thread lie on its stack, above the stack pointer
 * and within the stack's size: a frame pointer farther above the stack
 * pointer than MAX_STACK_SPAN is not followed. 8 MiB is the usual
 * RLIMIT_STACK, hence the main thread's and glibc's default thread stack
 * size; a deeper chain on a larger stack is cut there (127 frames would
 * need frames of 64 KiB on average to get that far). */
#define MAX_STACK_SPAN (8UL << 20)

#define PF_KTHREAD 0x00200000 /* include/linux/sched.h, stable since 2.6 */

#if defined(__TARGET_ARCH_x86)
#define USER32_CS 0x23 /* __USER32_CS: a 32-bit (compat) task */
#define COMPAT_MODE(cs, pstate) (((cs) & 0xffff) == USER32_CS)
#define RET_ADDR(a) (a)
#elif defined(__TARGET_ARCH_arm64)
#define PSR_MODE32_BIT 0x10 /* AArch32 (compat) task */
#define COMPAT_MODE(cs, pstate) ((pstate) & PSR_MODE32_BIT)
/* Saved link registers may carry a pointer authentication code or a tag
 * in their top bits: keep the 48-bit user address. */
#define RET_ADDR(a) ((a) & 0x0000ffffffffffffUL)
#endif

/* Counters in the stats map (per CPU, never reset; user space diffs). */
enum stat {
	STAT_SAMPLES = 0,        /* unused: user space sums the counts */
	STAT_DROPPED_FULL = 1,   /* sample lost: counts map full */
	STAT_STACK_COLLIDE = 2,  /* stack lost: bucket taken (EEXIST) or busy */
	STAT_STACK_FULL = 3,     /* stack lost: stack map full (ENOMEM, E2BIG) */
	STAT_NEWPID_LOST = 4,    /* new-pid notification lost: ring full */
	STAT_MAX = 5,
};

struct stack_key {
	__u32 pid;
	__u32 tid;
	__u64 user_stack;      /* key in ustacksN; 0: no user stack */
	__s32 kernel_stack_id; /* key in stacksN; negative: none */
	__u32 pad;             /* explicit, always 0 */
};

/* The value of a key: its count, and the thread's name when the key was
 * first counted in the window. Keeping the name out of the key spares
 * every sample reading it (and hashing and comparing 16 more bytes); only
 * a new key reads it. */
struct count_val {
	__u64 count;
	char comm[16];
};

/* A user stack: ips[0] is the interrupted instruction, then return
 * addresses, leaf first; len of them are valid. 1 KiB. */
struct user_stack {
	__u64 len;
	__u64 ips[MAX_STACK_DEPTH];
};

/* The frame record a frame pointer points to (x86-64 and arm64 alike). */
struct frame_record {
	__u64 next; /* the caller's frame pointer */
	__u64 ret;  /* the return address into the caller */
};

/* Sizes below are defaults; the loader overrides max_entries. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} active_slot SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct stack_key);
	__type(value, struct count_val);
} counts0 SEC(".maps"), counts1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));
} stacks0 SEC(".maps"), stacks1 SEC(".maps");

/* Preallocated (perf_event programs may use no other kind of hash map). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct user_stack);
} ustacks0 SEC(".maps"), ustacks1 SEC(".maps");

/* Scratch space for the user stack being walked (too big for the BPF
 * stack). A perf_event program does not nest on a CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct user_stack);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u8);
} known_pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
} new_pids SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);
	if (v)
		*v += 1; /* per-CPU: no atomics needed */
}

static __always_inline void note_stack_err(long id)
{
	if (id == -EEXIST)
		stat_inc(STAT_STACK_COLLIDE);
	else if (id == -ENOMEM)
		stat_inc(STAT_STACK_FULL);
}

/* User registers the walk starts from. */
struct user_regs {
	__u64 ip, fp, sp;
	bool compat;
};

/* user_regs_of fills r with the user registers of the interrupted task:
 * the sample's own registers when it interrupted user mode, else those the
 * task saved on entering the kernel. It returns false for kernel threads
 * (and user workers such as io_uring's, whose saved user ip is 0). */
static __always_inline bool user_regs_of(struct bpf_perf_event_data *ctx, bool user, struct user_regs *r)
{
	if (user) {
		/* The barriers keep clang from merging these loads with the
		 * pt_regs ones below into loads through a selected pointer:
		 * the verifier allows no ctx pointer arithmetic. */
#if defined(__TARGET_ARCH_x86)
		__u64 ip = ctx->regs.ip, fp = ctx->regs.bp, sp = ctx->regs.sp, cs = ctx->regs.cs;
		barrier_var(ip);
		barrier_var(fp);
		barrier_var(sp);
		barrier_var(cs);
		r->compat = COMPAT_MODE(cs, 0);
#elif defined(__TARGET_ARCH_arm64)
		__u64 ip = ctx->regs.pc, fp = ctx->regs.regs[29], sp = ctx->regs.sp, pstate = ctx->regs.pstate;
		barrier_var(ip);
		barrier_var(fp);
		barrier_var(sp);
		barrier_var(pstate);
		r->compat = COMPAT_MODE(0, pstate);
#endif
		r->ip = ip;
		r->fp = fp;
		r->sp = sp;
		return ip != 0;
	}
	struct task_struct *task = bpf_get_current_task_btf();
	if (task->flags & PF_KTHREAD)
		return false;
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
#if defined(__TARGET_ARCH_x86)
	r->ip = regs->ip;
	r->fp = regs->bp;
	r->sp = regs->sp;
	r->compat = COMPAT_MODE(regs->cs, 0);
#elif defined(__TARGET_ARCH_arm64)
	r->ip = regs->pc;
	r->fp = regs->regs[29];
	r->sp = regs->sp;
	r->compat = COMPAT_MODE(0, regs->pstate);
#endif
	return r->ip != 0;
}

/* mix folds one address into the running hash h. */
static __always_inline __u64 mix(__u64 h, __u64 a)
{
	h ^= a;
	h *= 0x9e3779b97f4a7c15UL;
	return h ^ (h >> 29);
}

/* walk_user fills st with the user stack from r, following frame
 * pointers, and returns the stack's hash (never 0). It stops, without
 * reading, at a frame pointer that is 0, not 8-byte aligned, not above the
 * previous frame record (stacks grow down, so callers' records lie higher;
 * this also ends loops), below the stack pointer or more than
 * MAX_STACK_SPAN above it; and at a failed read, a return address of 0 or
 * MAX_STACK_DEPTH frames. A compat (32-bit) task gets its ip only. */
static __always_inline __u64 walk_user(struct user_regs *r, struct user_stack *st)
{
	__u64 h = mix(0x5bd1e9955bd1e995UL, r->ip);
	__u64 fp = r->fp, lo = r->sp, hi = r->sp + MAX_STACK_SPAN;
	__u32 n = 1;
	st->ips[0] = r->ip;
	if (r->compat)
		fp = 0;
	for (__u32 i = 1; i < MAX_STACK_DEPTH; i++) {
		if (fp == 0 || (fp & 7) || fp < lo || fp > hi)
			break;
		struct frame_record rec;
		if (bpf_probe_read_user(&rec, sizeof(rec), (void *)fp))
			break;
		__u64 ret = RET_ADDR(rec.ret);
		if (ret == 0)
			break;
		st->ips[i] = ret;
		n = i + 1;
		h = mix(h, ret);
		lo = fp + sizeof(rec);
		fp = rec.next;
	}
	st->len = n;
	h = mix(h, n);
	return h ? h : 1;
}

/* store_user puts the walked stack into ustacks under hash unless it is
 * there already (a 64-bit hash: same hash, same stack), and returns hash,
 * or 0 when the stack is lost (counted). It is called for a key new in the
 * window, whose stack is most often new too (the leaf is the exact
 * instruction), so it inserts without looking up first: an existing stack
 * costs the same lookup inside the update. */
static __always_inline __u64 store_user(void *ustacks, __u64 hash, struct user_stack *st)
{
	long err = bpf_map_update_elem(ustacks, &hash, st, BPF_NOEXIST);
	if (err == 0 || err == -EEXIST)
		return hash; /* EEXIST: another CPU stored it meanwhile */
	stat_inc(err == -E2BIG || err == -ENOMEM ? STAT_STACK_FULL : STAT_STACK_COLLIDE);
	return 0;
}

/* count adds one to key's count in counts and returns true when the key
 * is new in this window (the only case where the pid may be new too). A
 * new key's user stack (scratch st) is stored in ustacks first, so a key
 * found in counts has its stack in ustacks of the same slot already: the
 * common case, a stack seen before in this window, costs one lookup. A
 * stack that cannot be stored is counted as lost and the key gets no user
 * stack. */
static __always_inline bool count(void *counts, void *ustacks, struct stack_key *key, struct user_stack *st)
{
	struct count_val *v = bpf_map_lookup_elem(counts, key);
	if (v) {
		__sync_fetch_and_add(&v->count, 1);
		return false;
	}
	if (key->user_stack && st)
		key->user_stack = store_user(ustacks, key->user_stack, st);
	struct count_val one = {.count = 1};
	bpf_get_current_comm(&one.comm, sizeof(one.comm));
	long err = bpf_map_update_elem(counts, key, &one, BPF_NOEXIST);
	if (err == -EEXIST) {
		v = bpf_map_lookup_elem(counts, key);
		if (v)
			__sync_fetch_and_add(&v->count, 1);
		return false;
	} else if (err) {
		stat_inc(STAT_DROPPED_FULL);
		return false;
	}
	return true;
}

SEC("perf_event")
int sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 pid = id >> 32;
	if (pid == 0)
		return 0; /* idle */

	struct stack_key key = {};
	key.pid = pid;
	key.tid = (__u32)id;
	key.kernel_stack_id = -1;

	__u32 zero = 0;
	__u32 *slot = bpf_map_lookup_elem(&active_slot, &zero);
	bool one = slot && *slot;

	/* A sample that interrupted user mode has no kernel stack: the
	 * kernel would walk nothing, so don't ask (most samples of busy
	 * user code). */
	bool user = USER_MODE(&ctx->regs);
	if (!user) {
		long kid = one ? bpf_get_stackid(ctx, &stacks1, 0) : bpf_get_stackid(ctx, &stacks0, 0);
		note_stack_err(kid);
		key.kernel_stack_id = kid < 0 ? -1 : kid;
	}

	struct user_regs regs;
	struct user_stack *st = bpf_map_lookup_elem(&scratch, &zero);
	if (st && user_regs_of(ctx, user, &regs))
		key.user_stack = walk_user(&regs, st);

	bool fresh = one ? count(&counts1, &ustacks1, &key, st) : count(&counts0, &ustacks0, &key, st);

	/* A pid is looked up in known_pids only when its key is new in this
	 * window, not on every sample. */
	if (fresh && key.user_stack && !bpf_map_lookup_elem(&known_pids, &pid)) {
		__u8 seen = 1;
		bpf_map_update_elem(&known_pids, &pid, &seen, BPF_ANY);
		if (bpf_ringbuf_output(&new_pids, &pid, sizeof(pid), 0))
			stat_inc(STAT_NEWPID_LOST);
	}
	return 0;
}

/* A new image: forget the pid so its next sample announces it again. */
SEC("raw_tracepoint/sched_process_exec")
int on_exec(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	bpf_map_delete_elem(&known_pids, &pid);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
