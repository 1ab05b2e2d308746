// The Go runtime asks for the stack bounds of each foreign thread the first
// time it calls into Go (x_cgo_getstackbound: pthread_getattr_np). For a
// process's main thread glibc answers by reading and parsing
// /proc/self/maps, which in a Python process with torch loaded (500+
// mappings) took 0.9-1.3 ms of the first call's time; any other thread costs
// microseconds. This definition, hidden and so used only by the code linked
// into this library, answers for the main thread from the initial stack
// pointer and RLIMIT_STACK, and hands every other case to glibc.
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <features.h> // defines __GLIBC__ on glibc
#if defined(__linux__) && defined(__GLIBC__)
#include <dlfcn.h>
#include <errno.h>
#include <limits.h> // PTHREAD_STACK_MIN (glibc before 2.34 defines it only here)
#include <pthread.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

// The stack pointer at process start (glibc's dynamic loader exports it):
// every frame of the main thread lies below it.
extern void *__libc_stack_end;

typedef int (*getattr_fn)(pthread_t, pthread_attr_t *);

// main_thread_stack reports the calling thread's stack when it is the main
// thread and its stack pointer lies in the range reported. glibc reports
// [end - RLIMIT_STACK, initial stack pointer's page), where end is the end
// of the stack's mapping, which lies above the initial stack pointer by the
// arguments, the environment and the auxiliary vector; the kernel keeps the
// first two, their pointers included, within a quarter of RLIMIT_STACK. So
// the range reported here, the same top and a quarter and 64 KiB less
// below, lies within glibc's.
static int main_thread_stack(pthread_attr_t *attr) {
    if (getpid() != (pid_t)syscall(SYS_gettid) || __libc_stack_end == NULL) return 0;
    struct rlimit rl;
    if (getrlimit(RLIMIT_STACK, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return 0;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t top = ((uintptr_t)__libc_stack_end + page - 1) & ~(page - 1);
    uintptr_t limit = (uintptr_t)rl.rlim_cur;
    if (limit < 4 * PTHREAD_STACK_MIN + (64 << 10)) return 0;
    uintptr_t size = (limit - limit / 4 - (64 << 10)) & ~(page - 1);
    if (size >= top) return 0;
    uintptr_t sp = (uintptr_t)__builtin_frame_address(0);
    if (sp < top - size || sp >= top) return 0; // not on the initial stack
    if (pthread_attr_init(attr) != 0) return 0;
    if (pthread_attr_setstack(attr, (void *)(top - size), size) != 0) {
        pthread_attr_destroy(attr);
        return 0;
    }
    return 1;
}

__attribute__((visibility("hidden"))) int pthread_getattr_np(pthread_t thread, pthread_attr_t *attr) {
    static getattr_fn glibc;
    if (pthread_equal(thread, pthread_self()) && main_thread_stack(attr)) return 0;
    getattr_fn f = __atomic_load_n(&glibc, __ATOMIC_ACQUIRE);
    if (f == NULL) {
        f = (getattr_fn)dlsym(RTLD_NEXT, "pthread_getattr_np");
        if (f == NULL) return ENOSYS;
        __atomic_store_n(&glibc, f, __ATOMIC_RELEASE);
    }
    return f(thread, attr);
}
#endif

// For stackbound_test.go: the bounds reported above for the calling thread,
// glibc's own, and the caller's stack pointer, in out[0..4]. 0 if either
// call failed.
int msgo_stack_bounds(uintptr_t out[5]) {
#if defined(__linux__) && defined(__GLIBC__)
    pthread_attr_t ours, theirs;
    void *addr;
    size_t size;
    if (pthread_getattr_np(pthread_self(), &ours) != 0) return 0;
    pthread_attr_getstack(&ours, &addr, &size);
    pthread_attr_destroy(&ours);
    out[0] = (uintptr_t)addr;
    out[1] = (uintptr_t)addr + size;
    getattr_fn glibc = (getattr_fn)dlsym(RTLD_NEXT, "pthread_getattr_np");
    if (glibc == NULL || glibc(pthread_self(), &theirs) != 0) return 0;
    pthread_attr_getstack(&theirs, &addr, &size);
    pthread_attr_destroy(&theirs);
    out[2] = (uintptr_t)addr;
    out[3] = (uintptr_t)addr + size;
    out[4] = (uintptr_t)__builtin_frame_address(0);
    return 1;
#else
    (void)out;
    return 0;
#endif
}
