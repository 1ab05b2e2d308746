/* The plain readers' loop in C threads, for bench/worker.py (impl "c").
 *
 * plain_read(): `threads` pthreads take chunk-sized pieces of all the files off
 * one shared atomic counter and pread() each into slot (k % nslots) of `buf`,
 * which the caller has allocated and pre-faulted. With direct != 0 the files are
 * opened O_DIRECT and lengths are rounded up to 4 KiB (EOF gives a short read).
 * Returns the bytes read, or -errno.
 *
 * Built by bench/run.py with: gcc -O2 -shared -fPIC -pthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

typedef struct { int file; long long off, len; } piece;

typedef struct {
    const int *fds;
    const long long *sizes;
    const piece *pieces;
    long long npieces, chunk, nslots;
    char *buf;
    long long next; /* atomic */
    long long total; /* atomic */
    int err;        /* atomic, first errno */
} job;

static void *worker(void *arg) {
    job *j = arg;
    long long got = 0;
    for (;;) {
        long long k = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (k >= j->npieces || __atomic_load_n(&j->err, __ATOMIC_RELAXED)) break;
        const piece *p = &j->pieces[k];
        char *dst = j->buf + (k % j->nslots) * j->chunk;
        long long done = 0, want = p->len;
        long long left_in_file = j->sizes[p->file] - p->off;
        while (done < want) {
            ssize_t r = pread(j->fds[p->file], dst + done, (size_t)(want - done), p->off + done);
            if (r < 0) {
                if (errno == EINTR) continue;
                int zero = 0;
                __atomic_compare_exchange_n(&j->err, &zero, errno, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
                return NULL;
            }
            if (r == 0) break; /* EOF */
            done += r;
            if (done >= left_in_file) break;
        }
        got += done < left_in_file ? done : left_in_file;
    }
    __atomic_fetch_add(&j->total, got, __ATOMIC_RELAXED);
    return NULL;
}

long long plain_read(const char **paths, const long long *sizes, int nfiles, int threads,
                     long long chunk, void *buf, long long nslots, int direct) {
    long long npieces = 0;
    for (int i = 0; i < nfiles; i++) npieces += (sizes[i] + chunk - 1) / chunk;
    piece *pieces = calloc((size_t)(npieces ? npieces : 1), sizeof(piece));
    int *fds = calloc((size_t)nfiles, sizeof(int));
    pthread_t *tids = calloc((size_t)threads, sizeof(pthread_t));
    if (!pieces || !fds || !tids) { free(pieces); free(fds); free(tids); return -ENOMEM; }
    long long k = 0;
    int opened = 0, rc = 0;
    for (int i = 0; i < nfiles; i++) {
        fds[i] = open(paths[i], O_RDONLY | (direct ? O_DIRECT : 0));
        if (fds[i] < 0) { rc = -errno; goto out; }
        opened++;
        for (long long off = 0; off < sizes[i]; off += chunk) {
            long long n = sizes[i] - off < chunk ? sizes[i] - off : chunk;
            if (direct) n = (n + 4095) / 4096 * 4096;
            pieces[k].file = i; pieces[k].off = off; pieces[k].len = n; k++;
        }
    }
    job j = { fds, sizes, pieces, npieces, chunk, nslots, buf, 0, 0, 0 };
    int started = 0;
    for (int t = 0; t < threads; t++) {
        if (pthread_create(&tids[t], NULL, worker, &j) != 0) break;
        started++;
    }
    if (started == 0) { rc = -EAGAIN; goto out; }
    for (int t = 0; t < started; t++) pthread_join(tids[t], NULL);
    rc = 0;
    if (j.err) rc = -j.err;
out:
    for (int i = 0; i < opened; i++) close(fds[i]);
    free(pieces); free(fds); free(tids);
    return rc < 0 ? rc : j.total;
}
