// Test workload for the sampler (built at test time with
// gcc -O1 -fno-omit-frame-pointer). Modes:
//   cpu [seconds]      burns CPU in burn_alpha and burn_beta, 3:1
//   syscalls [seconds] makes tight getppid/write syscalls (kernel-heavy)
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

int main(int argc, char **argv)
{
	int seconds = argc > 2 ? atoi(argv[2]) : 120;
	alarm(seconds > 0 ? seconds : 120);
	if (argc > 1 && strcmp(argv[1], "syscalls") == 0)
		syscall_loop();
	for (;;) {
		burn_alpha(3 * UNIT);
		burn_beta(UNIT);
	}
}
