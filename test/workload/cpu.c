// Test workload for the sampler (built at test time with
// gcc -O1 -fno-omit-frame-pointer). Modes:
//   cpu [seconds]      burns CPU in burn_alpha and burn_beta, 3:1
//   syscalls [seconds] makes tight getppid/write syscalls (kernel-heavy)
//   deep [seconds] [depth]
//                      recurses `depth` (default 40) frames of recurse
//                      below main, then burns CPU in burn_deep
//   badfp [seconds] [kind]
//                      burns CPU in burn_fp (assembly) with the frame
//                      pointer register set to something a frame-pointer
//                      unwinder must not follow: kind is zero, odd (not
//                      aligned), below (under the stack pointer), far
//                      (64 MiB above it), cycle (a record pointing to
//                      itself, return address cycle_mark) or noret (a
//                      record with return address 0)
// It exits after `seconds` (default 120) so a crashed test leaves nothing.
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define UNIT 20000L

static volatile unsigned long sink;

__attribute__((noinline)) void burn_alpha(long n)
{
	unsigned long x = sink;
	for (long i = 0; i < n; i++)
		x = x * 6364136223846793005UL + (unsigned long)i;
	sink = x;
}

__attribute__((noinline)) void burn_beta(long n)
{
	unsigned long x = sink;
	for (long i = 0; i < n; i++)
		x = x * 2862933555777941757UL + (unsigned long)i;
	sink = x;
}

__attribute__((noinline)) void syscall_loop(void)
{
	char c = 0;
	int fd = -1;
	for (;;) {
		syscall(SYS_getppid);
		if (fd < 0)
			fd = open("/dev/null", 1);
		if (fd >= 0)
			(void)!write(fd, &c, 1);
	}
}

__attribute__((noinline)) void burn_deep(void)
{
	do // until the alarm, in practice (not visibly endless to gcc)
		burn_alpha(UNIT);
	while (sink != 1);
}

__attribute__((noinline)) int recurse(int depth)
{
	if (depth <= 1)
		burn_deep();
	else
		sink += recurse(depth - 1); // not a tail call
	return (int)sink;
}

// burn_fp(n, fp) spins n times with the frame pointer register set to fp
// and restores it before it returns.
void burn_fp(unsigned long n, unsigned long fp);
#if defined(__x86_64__)
__asm__(".text\n"
	".globl burn_fp\n"
	".type burn_fp, @function\n"
	"burn_fp:\n"
	"	push %rbp\n"
	"	mov %rsi, %rbp\n"
	"1:	dec %rdi\n"
	"	jnz 1b\n"
	"	pop %rbp\n"
	"	ret\n"
	".size burn_fp, .-burn_fp\n");
#elif defined(__aarch64__)
__asm__(".text\n"
	".globl burn_fp\n"
	".type burn_fp, %function\n"
	"burn_fp:\n"
	"	stp x29, x30, [sp, #-16]!\n"
	"	mov x29, x1\n"
	"1:	subs x0, x0, #1\n"
	"	b.ne 1b\n"
	"	ldp x29, x30, [sp], #16\n"
	"	ret\n"
	".size burn_fp, .-burn_fp\n");
#else
#error "cpu.c: burn_fp needs x86-64 or arm64"
#endif

// cycle_mark is only an address: the return address of the cycle record.
__attribute__((noinline)) void cycle_mark(void)
{
	sink++;
}

__attribute__((noinline)) void badfp_loop(const char *kind)
{
	unsigned long rec[2];
	unsigned long here = (unsigned long)__builtin_frame_address(0);
	unsigned long fp = 0;
	if (strcmp(kind, "odd") == 0) {
		fp = here + 3;
	} else if (strcmp(kind, "below") == 0) {
		fp = here - (64UL << 10);
	} else if (strcmp(kind, "far") == 0) {
		fp = here + (64UL << 20);
	} else if (strcmp(kind, "cycle") == 0) {
		rec[0] = (unsigned long)rec;
		rec[1] = (unsigned long)cycle_mark;
		fp = (unsigned long)rec;
	} else if (strcmp(kind, "noret") == 0) {
		rec[0] = here;
		rec[1] = 0;
		fp = (unsigned long)rec;
	}
	for (;;) {
		__asm__ volatile("" ::: "memory"); // rec is read behind our back
		burn_fp(100 * UNIT, fp);
	}
}

int main(int argc, char **argv)
{
	int seconds = argc > 2 ? atoi(argv[2]) : 120;
	alarm(seconds > 0 ? seconds : 120);
	if (argc > 1 && strcmp(argv[1], "syscalls") == 0)
		syscall_loop();
	if (argc > 1 && strcmp(argv[1], "deep") == 0)
		recurse(argc > 3 ? atoi(argv[3]) : 40);
	if (argc > 1 && strcmp(argv[1], "badfp") == 0)
		badfp_loop(argc > 3 ? argv[3] : "zero");
	for (;;) {
		burn_alpha(3 * UNIT);
		burn_beta(UNIT);
	}
}
