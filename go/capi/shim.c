// The public entry points. They stop calls made in a child after fork():
// the Go runtime's threads do not survive fork, so entering Go there would
// hang the child. Everything else is forwarded to the Go exports.
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model_streamer.h"
#include "_cgo_export.h"

static pid_t loaded_pid;

__attribute__((constructor)) static void remember_pid(void) { loaded_pid = getpid(); }

static int forked(char *err, size_t err_len) {
    if (getpid() == loaded_pid) return 0;
    if (err != NULL && err_len > 0) {
        const char *msg =
            "model-streamer cannot be used in a process forked after the library was loaded; "
            "use the spawn start method";
        strncpy(err, msg, err_len - 1);
        err[err_len - 1] = '\0';
    }
    return 1;
}

const char *ms_version(void) { return msgo_version(); }

int ms_stream_open(const char *const *uris, int32_t n_uris, const char *const *names, int32_t n_names,
                   const ms_config *config, int64_t *handle, char *err, size_t err_len) {
    if (forked(err, err_len)) return MS_ERR_FORKED;
    return msgo_stream_open((char **)uris, n_uris, (char **)names, n_names, (ms_config *)config, handle, err,
                            err_len);
}

int ms_stream_metadata(int64_t handle, char *buf, size_t buf_len, size_t *needed, char *err, size_t err_len) {
    if (forked(err, err_len)) return MS_ERR_FORKED;
    return msgo_stream_metadata(handle, buf, buf_len, needed, err, err_len);
}

int ms_stream_next(int64_t handle, ms_tensor *out, int32_t max, int32_t *n, int32_t timeout_ms, char *err,
                   size_t err_len) {
    if (n != NULL) *n = 0;
    if (forked(err, err_len)) return MS_ERR_FORKED;
    return msgo_stream_next(handle, out, max, n, timeout_ms, err, err_len);
}

int ms_release(uint64_t token) {
    if (forked(NULL, 0)) return MS_ERR_FORKED;
    return msgo_release(token);
}

int ms_stream_stats(int64_t handle, ms_stats *out) {
    if (forked(NULL, 0)) return MS_ERR_FORKED;
    return msgo_stream_stats(handle, out);
}

int ms_stream_close(int64_t handle) {
    if (forked(NULL, 0)) return MS_ERR_FORKED;
    return msgo_stream_close(handle);
}

int ms_list(const char *uri, int32_t recursive, const ms_config *config, char **out_json, char *err,
            size_t err_len) {
    if (out_json != NULL) *out_json = NULL;
    if (forked(err, err_len)) return MS_ERR_FORKED;
    return msgo_list((char *)uri, recursive, (ms_config *)config, out_json, err, err_len);
}

int ms_cache(const char *op, const char *dir, int64_t max_bytes, char **out_json, char *err,
             size_t err_len) {
    if (out_json != NULL) *out_json = NULL;
    if (forked(err, err_len)) return MS_ERR_FORKED;
    return msgo_cache((char *)op, (char *)dir, max_bytes, out_json, err, err_len);
}

int ms_cache_wait(int32_t timeout_ms) {
    if (forked(NULL, 0)) return MS_ERR_FORKED;
    return msgo_cache_wait(timeout_ms);
}

int ms_cache_contribute(const char *uri, int64_t offset, const void *data, int64_t len) {
    if (forked(NULL, 0)) return MS_ERR_FORKED;
    return msgo_cache_contribute((char *)uri, offset, (void *)data, len);
}

void ms_free(char *p) {
    if (p != NULL) free(p);
}

int ms_download(const char *uri, const char *path, const ms_config *config, char *err, size_t err_len) {
    if (forked(err, err_len)) return MS_ERR_FORKED;
    return msgo_download((char *)uri, (char *)path, (ms_config *)config, err, err_len);
}

int ms_stream_arena(int64_t handle, void **base, uint64_t *len) {
    if (base != NULL) *base = NULL;
    if (len != NULL) *len = 0;
    if (forked(NULL, 0)) return MS_ERR_FORKED;
    return msgo_stream_arena(handle, base, len);
}

int ms_read_headers(const char *const *uris, int32_t n_uris, const ms_config *config, char **out_json,
                    char *err, size_t err_len) {
    if (out_json != NULL) *out_json = NULL;
    if (forked(err, err_len)) return MS_ERR_FORKED;
    return msgo_read_headers((char **)uris, n_uris, (ms_config *)config, out_json, err, err_len);
}

int ms_stream_open_ranges(const char *const *uris, int32_t n_uris, const int32_t *n_ranges,
                          const int64_t *offsets, const int64_t *sizes, const ms_config *config,
                          int64_t *handle, char *err, size_t err_len) {
    if (forked(err, err_len)) return MS_ERR_FORKED;
    return msgo_stream_open_ranges((char **)uris, n_uris, (int32_t *)n_ranges, (int64_t *)offsets,
                                   (int64_t *)sizes, (ms_config *)config, handle, err, err_len);
}

int ms_stream_open_checksum(const char *const *uris, int32_t n_uris, const ms_config *config, int64_t *handle,
                            char *err, size_t err_len) {
    if (forked(err, err_len)) return MS_ERR_FORKED;
    return msgo_stream_open_checksum((char **)uris, n_uris, (ms_config *)config, handle, err, err_len);
}

int ms_stream_checksums(int64_t handle, char **out_json, char *err, size_t err_len) {
    if (out_json != NULL) *out_json = NULL;
    if (forked(err, err_len)) return MS_ERR_FORKED;
    return msgo_stream_checksums(handle, out_json, err, err_len);
}

int ms_put(const char *uri, const void *data, uint64_t len, const ms_config *config, char *err, size_t err_len) {
    if (forked(err, err_len)) return MS_ERR_FORKED;
    return msgo_put((char *)uri, (void *)data, len, (ms_config *)config, err, err_len);
}
