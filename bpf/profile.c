//go:build ignore

// SPDX-License-Identifier: GPL-2.0-only OR BSD-2-Clause
/* fleetprof CPU sampler.
 *
 * A perf_event program runs on every CPU at the sampling frequency. It
 * counts samples keyed by {pid, tid, user stack id, kernel stack id, comm}
 * in one of two slots (counts0/stacks0 or counts1/stacks1); user space flips
 * the active slot at each window boundary and drains the idle one, so no
 * sample of the window in progress is lost or mixed with the next window.
 * Stacks are walked by the kernel (frame pointers for user code).
 *
 * A pid seen for the first time is announced on the new_pids ring buffer so
 * user space can snapshot its mappings before it exits; exec forgets the pid
 * so the new image is announced again. */
#include "vmlinux.h"
#include "bpf_helpers.h"

#define MAX_STACK_DEPTH 127
#define E2BIG 7
#define EFAULT 14
#define EEXIST 17
#define ENOMEM 12

/* Counters in the stats map (per CPU, never reset; user space diffs). */
enum stat {
	STAT_SAMPLES = 0,        /* unused: user space sums the counts */
	STAT_DROPPED_FULL = 1,   /* sample lost: counts map full */
	STAT_STACK_COLLIDE = 2,  /* stack lost: hash bucket taken (EEXIST) */
	STAT_STACK_FULL = 3,     /* stack lost: stack map full (ENOMEM) */
	STAT_NEWPID_LOST = 4,    /* new-pid notification lost: ring full */
	STAT_MAX = 5,
};

struct stack_key {
	__u32 pid;
	__u32 tid;
	__s32 user_stack_id;
	__s32 kernel_stack_id;
	char comm[16];
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
	__type(value, __u64);
} counts0 SEC(".maps"), counts1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 16384);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, MAX_STACK_DEPTH * sizeof(__u64));
} stacks0 SEC(".maps"), stacks1 SEC(".maps");

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

/* count adds one to key's count and returns true when the key is new in
 * this window (the only case where the pid may be new too). */
static __always_inline bool count(void *counts, struct stack_key *key)
{
	__u64 *v = bpf_map_lookup_elem(counts, key);
	if (v) {
		__sync_fetch_and_add(v, 1);
		return false;
	}
	__u64 one = 1;
	long err = bpf_map_update_elem(counts, key, &one, BPF_NOEXIST);
	if (err == -EEXIST) {
		v = bpf_map_lookup_elem(counts, key);
		if (v)
			__sync_fetch_and_add(v, 1);
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
	bpf_get_current_comm(&key.comm, sizeof(key.comm));

	__u32 zero = 0;
	__u32 *slot = bpf_map_lookup_elem(&active_slot, &zero);
	bool one = slot && *slot;

	/* Kernel threads have no user stack: that call returns -EFAULT at
	 * once, cheaper than finding out from task_struct. A sample that
	 * interrupted user mode has no kernel stack: the kernel would walk
	 * nothing and return -EFAULT, so don't ask (most samples of busy
	 * user code). */
	bool user = USER_MODE(&ctx->regs);
	long kid = -EFAULT, uid;
	if (one) {
		if (!user)
			kid = bpf_get_stackid(ctx, &stacks1, 0);
		uid = bpf_get_stackid(ctx, &stacks1, BPF_F_USER_STACK);
	} else {
		if (!user)
			kid = bpf_get_stackid(ctx, &stacks0, 0);
		uid = bpf_get_stackid(ctx, &stacks0, BPF_F_USER_STACK);
	}
	note_stack_err(kid);
	note_stack_err(uid);
	key.kernel_stack_id = kid;
	key.user_stack_id = uid;

	bool fresh = one ? count(&counts1, &key) : count(&counts0, &key);

	/* A pid is looked up in known_pids only when its key is new in this
	 * window, not on every sample. */
	if (fresh && uid >= 0 && !bpf_map_lookup_elem(&known_pids, &pid)) {
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
