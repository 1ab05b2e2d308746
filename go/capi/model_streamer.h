/*
 * model_streamer.h: the C ABI of libmodelstreamer.so.
 *
 * This header is the contract. The text between the CDEF markers is fed
 * verbatim to cffi's cdef(), so it holds only plain declarations and
 * integer #defines (no other preprocessor lines).
 *
 * Conventions:
 *  - Every function returns an int status: MS_OK or one of MS_ERR_*.
 *  - Functions that can fail with a message take (char *err, size_t err_len):
 *    on failure a NUL-terminated message (truncated to err_len) is copied
 *    there. err may be NULL.
 *  - Streams are named by opaque int64 handles. A stale or unknown handle
 *    gives MS_ERR_BAD_HANDLE, never a crash.
 *  - Every function is thread-safe. Blocking calls take a timeout so the
 *    caller can handle signals between waits.
 *  - Memory handed out (ms_tensor.data) is owned by the library. It stays
 *    valid until its token is released with ms_release(), even after
 *    ms_stream_close(): the last release frees it.
 *  - In a process forked from one that had loaded the library, every
 *    function returns MS_ERR_FORKED.
 */
#ifndef MODEL_STREAMER_H
#define MODEL_STREAMER_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* CDEF BEGIN */
#define MS_ABI_VERSION 1

#define MS_OK 0
#define MS_ERR_INVALID_ARGUMENT 1 /* bad request or invalid file contents */
#define MS_ERR_NOT_FOUND 2
#define MS_ERR_PERMISSION_DENIED 3
#define MS_ERR_MEMORY_LIMIT 4 /* memory limit below the largest tensor */
#define MS_ERR_IO 5           /* storage failure while reading */
#define MS_ERR_TIMEOUT 6      /* a timed wait expired; not a failure */
#define MS_ERR_END 7          /* every tensor has been delivered */
#define MS_ERR_CLOSED 8       /* the stream was closed */
#define MS_ERR_BAD_HANDLE 9
#define MS_ERR_CANCELED 10
#define MS_ERR_INTERNAL 11 /* a bug: a recovered panic */
#define MS_ERR_FORKED 12   /* called in a child after fork() */
#define MS_ERR_CHECKSUM 13 /* bytes read do not match the store's checksum, or
                            * MODEL_STREAMER_VERIFY=require and an object
                            * cannot be verified (see ms_stream_next) */

#define MS_READ_AUTO 0     /* per file: mmap when cached, O_DIRECT when not */
#define MS_READ_BUFFERED 1 /* pread through the page cache */
#define MS_READ_DIRECT 2   /* O_DIRECT, falling back to pread where unsupported */
#define MS_READ_MMAP 3     /* zero-copy private mapping (memory limit -1 only) */
#define MS_READ_AUTO_READ 4 /* per file: pread when cached, O_DIRECT when not;
                             * never maps, so every byte lands in the arena
                             * (for consumers that pin it and copy on) */

typedef struct {
    int32_t concurrency;  /* reads in flight; <= 0: the backend's default */
    int64_t memory_limit; /* -1: whole request, 0: largest tensor, N: N bytes */
    int64_t chunk_bytes;  /* bytes per read; <= 0: the backend's default */
    int32_t read_mode;    /* MS_READ_* (local files) */
    /* Backend settings as "NAME=VALUE" strings, named like the environment
     * variables that document them (AWS_ENDPOINT_URL=..., ...). The library
     * never reads the environment itself: pass what the backends need. */
    const char *const *settings;
    int32_t n_settings;
} ms_config;

/* One tensor whose bytes are in memory. */
typedef struct {
    int32_t file_index;   /* index into the uris passed to ms_stream_open */
    int32_t tensor_index; /* index into that file's "tensors" in the metadata */
    void *data;           /* first byte of the tensor (NULL when nbytes == 0) */
    uint64_t nbytes;
    uint64_t token;       /* pass to ms_release() when done with data */
} ms_tensor;

typedef struct {
    uint64_t bytes_requested;  /* tensor bytes the request covers */
    uint64_t bytes_read;       /* tensor bytes read (or mapped) from storage */
    uint64_t reads;            /* read calls issued to storage */
    uint64_t retries;
    uint64_t tensors_delivered;
    uint64_t arena_bytes;      /* CPU memory the stream allocated, peak */
    int64_t first_tensor_ns;   /* open -> first tensor ready; -1 if none yet */
    int64_t elapsed_ns;        /* open -> last tensor ready (or now) */
    int64_t memory_wait_ns;    /* readers waiting for buffer space (consumer-bound) */
    int64_t consumer_wait_ns;  /* ms_stream_next waiting for data (storage-bound) */
    uint64_t header_bytes_read; /* bytes read to learn the headers */
} ms_stats;

/* Library version string, e.g. "0.1.0". Always succeeds. */
const char *ms_version(void);

/* Reads and validates the headers of every file (in parallel), plans the
 * reads and starts streaming. names: the tensors to stream (n_names < 0:
 * all of them); a name found in no file fails with MS_ERR_INVALID_ARGUMENT
 * listing the unknown names. */
int ms_stream_open(const char *const *uris, int32_t n_uris,
                   const char *const *names, int32_t n_names,
                   const ms_config *config, int64_t *handle,
                   char *err, size_t err_len);

/* The validated headers as JSON:
 * {"files":[{"uri":"...","data_offset":N,"size":N,
 *            "tensors":[{"name":"...","dtype":"F32","shape":[..],
 *                        "offsets":[begin,end]}, ...]}, ...]}
 * "tensors" lists the requested tensors in file-offset order; offsets are
 * relative to the data section. Each file may carry "verify":
 * {"algorithm","source","expected"} when it is verified against its store's
 * checksum, or {"skipped": reason} when it is not. Writes at most buf_len bytes (NUL included)
 * and sets *needed to the full length + 1; if buf_len < *needed nothing
 * useful is written and the call returns MS_ERR_INVALID_ARGUMENT. */
int ms_stream_metadata(int64_t handle, char *buf, size_t buf_len,
                       size_t *needed, char *err, size_t err_len);

/* Waits up to timeout_ms (< 0: forever) for tensors and copies up to max
 * of them into out, setting *n. Returns MS_OK with *n > 0, MS_ERR_TIMEOUT
 * with *n == 0, MS_ERR_END once every tensor has been delivered, or the
 * error that stopped the stream. Waiting while every buffer is held by
 * unreleased tokens lets the readers go on in memory outside the buffer
 * (never past a limit for long: see the memory limit); timeout_ms == 0
 * only peeks and never does that.
 * Integrity (setting MODEL_STREAMER_VERIFY = auto | off | require): a file
 * read whole whose store keeps a whole-object checksum is verified; its
 * last tensors are handed out only after the check passed, so on a
 * mismatch this returns MS_ERR_CHECKSUM ("URI: checksum mismatch: ALG
 * expected HEX, computed HEX (...)") before that file's last tensors, and
 * MS_ERR_END is never returned for the stream. */
int ms_stream_next(int64_t handle, ms_tensor *out, int32_t max, int32_t *n,
                   int32_t timeout_ms, char *err, size_t err_len);

/* Returns a tensor's memory to the library. Idempotent: a second release
 * of the same token is a no-op. Valid after ms_stream_close(). */
int ms_release(uint64_t token);

int ms_stream_stats(int64_t handle, ms_stats *out);

/* The stream's reusable buffer (the ring), for registering it with a device
 * runtime (pinning). Tensors of regions placed outside it (mapped files,
 * fresh memory while the caller holds the ring) lie elsewhere. Sets
 * *base = NULL, *len = 0 when the stream has none. Valid until close. */
int ms_stream_arena(int64_t handle, void **base, uint64_t *len);

/* Lists the objects under uri (a directory or a key prefix) as JSON,
 * {"objects":[{"uri":"...","size":N}, ...]} sorted by uri, in a string the
 * library allocates: *out_json, to be freed with ms_free(). recursive == 0
 * lists direct children only. */
int ms_list(const char *uri, int32_t recursive, const ms_config *config,
            char **out_json, char *err, size_t err_len);

/* Frees a string the library returned. */
void ms_free(char *p);

/* Copies the object at uri to the local file path, reading ranges in
 * parallel; the file is written under a temporary name in the same
 * directory and renamed into place when complete and verified
 * (MODEL_STREAMER_VERIFY, as for streams): on MS_ERR_CHECKSUM, as on any
 * failure, nothing is left at path and the temporary file is removed. */
int ms_download(const char *uri, const char *path, const ms_config *config,
                char *err, size_t err_len);

/* Cancels outstanding reads, waits until none can still write into the
 * stream's memory, and frees the handle. Memory behind unreleased tokens
 * is freed when they are released. */
int ms_stream_close(int64_t handle);
/* Reads and validates the headers of every file (in parallel), reading no
 * tensor data, and returns them as JSON in a string the library allocates
 * (*out_json, to be freed with ms_free()): the document ms_stream_metadata
 * returns, with every tensor of each file ("tensors" in file-offset order).
 * config: the backend settings, concurrency and chunk size (memory_limit and
 * read_mode are ignored). Errors as ms_stream_open's. */
int ms_read_headers(const char *const *uris, int32_t n_uris, const ms_config *config,
                    char **out_json, char *err, size_t err_len);
/* Opens a stream over explicit byte ranges of raw files (any contents: no
 * header is read or parsed). n_ranges[i] ranges belong to uris[i]; offsets
 * and sizes are flat arrays grouped by file in the order of uris (file 0's
 * ranges, then file 1's, ...), sum(n_ranges) entries each. A range is
 * [offset, offset + size); ranges need not be ordered and may overlap, and
 * a size of 0 is a valid (empty) range. A negative offset or size, or a
 * range ending past the end of its file, fails with MS_ERR_INVALID_ARGUMENT
 * naming the file and the range; a memory limit below the largest range
 * with MS_ERR_MEMORY_LIMIT. Every range is delivered by ms_stream_next as
 * one ms_tensor: file_index indexes uris, tensor_index the range within its
 * file. ms_stream_next, ms_release, ms_stream_stats, ms_stream_arena and
 * ms_stream_close work on the handle as on one from ms_stream_open; its
 * ms_stream_metadata lists each file's ranges in the caller's order as
 * "tensors" with an empty name and dtype, no shape and absolute offsets. */
int ms_stream_open_ranges(const char *const *uris, int32_t n_uris, const int32_t *n_ranges,
                          const int64_t *offsets, const int64_t *sizes,
                          const ms_config *config, int64_t *handle,
                          char *err, size_t err_len);
/* Checksum sidecars (integrity.Sidecar; docs/design.md section 9): a JSON
 * document "<file>.checksums.json" beside each checkpoint file with the
 * CRC32 of its header, of each tensor and of the whole file. When one is
 * present (and MODEL_STREAMER_VERIFY is not off), ms_stream_open and
 * ms_stream_open_ranges check every tensor it covers before handing it out:
 * ms_stream_next returns MS_ERR_CHECKSUM ("URI: checksum mismatch: crc32
 * expected HEX, computed HEX (tensor "NAME", ...)") instead of the
 * tensor. A sidecar that does not describe the file (other size or header:
 * written before the file changed), or is malformed, fails the open with
 * MS_ERR_CHECKSUM ("SIDECAR: unusable checksum sidecar: ..."). The
 * metadata's "verify" then also carries "sidecar", "sidecar_algorithm",
 * "sidecar_entries" (entries checked) and "sidecar_uncovered" (requested
 * tensors or ranges no entry covers).
 *
 * ms_stream_open_checksum opens a stream over every tensor of the files, as
 * ms_stream_open with no names, that computes their sidecars (existing
 * sidecars are not read; store checksums are verified as configured). Once
 * ms_stream_next has returned MS_ERR_END, ms_stream_checksums returns
 * {"files":[{"uri","sidecar","checksums":{...the sidecar document...}}]}
 * in a string to free with ms_free(). */
int ms_stream_open_checksum(const char *const *uris, int32_t n_uris, const ms_config *config,
                            int64_t *handle, char *err, size_t err_len);
int ms_stream_checksums(int64_t handle, char **out_json, char *err, size_t err_len);
/* Writes len bytes at data as the object (or file) uri, replacing it: one
 * request on object storage, a temporary file renamed into place locally. */
int ms_put(const char *uri, const void *data, uint64_t len, const ms_config *config,
           char *err, size_t err_len);

/* Manages the local cache in dir (what MODEL_STREAMER_CACHE_DIR names):
 * op "ls" (the complete entries, least recently used first), "du" (bytes
 * held and the limit), "prune" (evict least recently used entries down to
 * the limit, remove what interrupted writes left) or "clear" (remove every
 * entry). Entries a stream is reading are never removed. max_bytes is the
 * limit (<= 0: MODEL_STREAMER_CACHE_MAX_BYTES's default). The result is
 * JSON in a string the library allocates (*out_json, freed with
 * ms_free()). */
int ms_cache(const char *op, const char *dir, int64_t max_bytes, char **out_json,
             char *err, size_t err_len);

/* Waits up to timeout_ms (< 0: forever) until the cache entries of closed
 * streams are complete: checked, synced and renamed into place, which
 * happens in the background so that closing a stream does not wait for the
 * disk. Returns MS_OK, or MS_ERR_TIMEOUT. Call it before the process exits
 * (the Python package does, at exit): entries still being completed then
 * are left as temporary files, which no load uses. */
int ms_cache_wait(int32_t timeout_ms);

/* Hands len bytes at data, the bytes at offset of the object uri, to the
 * cache entry this process is writing for it (a distributed load reads a
 * share of each object and receives the rest from its peers). Returns 1 if
 * an entry being written took them, 0 if none is (nothing to do), or a
 * negative error code. The bytes are written before it returns; data is
 * only borrowed. With len 0 (data may be NULL) it writes nothing and
 * answers whether an entry for uri is being written: 1 or 0, so that bytes
 * that are not in host memory are copied back only when wanted. */
int ms_cache_contribute(const char *uri, int64_t offset, const void *data, int64_t len);
/* CDEF END */

#ifdef __cplusplus
}
#endif

#endif /* MODEL_STREAMER_H */
