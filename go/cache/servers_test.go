package cache_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/cache"
	"github.com/model-streamer/model-streamer/go/internal/faultproxy"
	"github.com/model-streamer/model-streamer/go/internal/sttest"
	"github.com/model-streamer/model-streamer/go/internal/testserver"
	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/azure"
	"github.com/model-streamer/model-streamer/go/storage/fs"
	"github.com/model-streamer/model-streamer/go/storage/gcs"
	"github.com/model-streamer/model-streamer/go/storage/s3"
	"github.com/model-streamer/model-streamer/go/stream"
)

// store is one real server behind a byte-counting proxy.
type store struct {
	name     string
	scheme   string
	bucket   string
	put      func(t testing.TB, key string, data []byte)
	settings storage.Settings // reach the server through the proxy
	proxy    *faultproxy.Proxy
}

func (s *store) uri(key string) string { return s.scheme + "://" + s.bucket + "/" + key }

// stores starts (or reuses) MinIO, fake-gcs-server and Azurite, each with a
// bucket of its own for the calling test and a proxy in front.
func stores(t *testing.T) []*store {
	t.Helper()
	bucket := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	if len(bucket) > 50 {
		bucket = bucket[:50]
	}
	bucket = strings.Trim(bucket, "-") + "-c"
	nowhere := filepath.Join(t.TempDir(), "none")

	minio := testserver.SharedMinIO(t)
	minio.CreateBucket(t, bucket)
	mp := faultproxy.Start(t, minio.Endpoint)

	fake := testserver.SharedFakeGCS(t)
	fake.CreateBucket(t, bucket)
	gp := faultproxy.Start(t, "http://"+fake.Host)

	azr := testserver.SharedAzurite(t)
	azr.CreateContainer(t, bucket)
	ap := faultproxy.Start(t, "http://"+strings.TrimPrefix(strings.TrimSuffix(azr.BlobEndpoint, "/"+azr.AccountName), "http://"))

	return []*store{
		{name: "minio", scheme: "s3", bucket: bucket, proxy: mp,
			put: func(t testing.TB, key string, data []byte) { minio.PutObject(t, bucket, key, data) },
			settings: storage.Settings{s3.SettingEndpoint: mp.URL(), s3.SettingAccessKeyID: minio.AccessKey,
				s3.SettingSecretAccessKey: minio.SecretKey, s3.SettingRegion: minio.Region, s3.SettingIMDSDisabled: "true",
				s3.SettingConfigFile: nowhere, s3.SettingCredentialsFile: nowhere}},
		{name: "fake-gcs", scheme: "gs", bucket: bucket, proxy: gp,
			put:      func(t testing.TB, key string, data []byte) { fake.PutObject(t, bucket, key, data) },
			settings: storage.Settings{gcs.SettingEndpoint: gp.URL() + "/storage/v1/"}},
		{name: "azurite", scheme: "az", bucket: bucket, proxy: ap,
			put: func(t testing.TB, key string, data []byte) { azr.PutBlob(t, bucket, key, data) },
			settings: storage.Settings{azure.SettingEndpoint: ap.URL() + "/" + azr.AccountName,
				azure.SettingAccountKey: azr.AccountKey}},
	}
}

// registry serves file paths and the scheme settings s reach.
func registry(t testing.TB, scheme string, s storage.Settings) *storage.Registry {
	t.Helper()
	reg := storage.NewRegistry()
	reg.Register("file", fs.New(fs.Options{}))
	var b storage.Backend
	var err error
	switch scheme {
	case "s3":
		b, err = s3.New(s)
	case "gs":
		b, err = gcs.New(s)
	case "az":
		b, err = azure.New(s)
	}
	if err != nil {
		t.Fatal(err)
	}
	if b != nil {
		reg.Register(scheme, b)
	}
	return reg
}

// model writes a checkpoint of about size bytes and returns its file bytes.
func model(t testing.TB, size int64, seed uint64) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "m.safetensors")
	var ts []sttest.Tensor
	for i := int64(0); i*(1<<20) < size; i++ {
		ts = append(ts, sttest.Tensor{Name: fmt.Sprintf("t%03d", i), DType: "F32", Shape: []int64{256, 1024}})
	}
	if _, err := sttest.Write(path, ts, seed); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// load streams every tensor of uris through o and returns, per file, the
// SHA-256 of its tensors' bytes in file order and the strategies used.
func load(ctx context.Context, o stream.Opener, uris ...string) ([]string, []string, error) {
	cfg := stream.DefaultConfig(o)
	cfg.Concurrency = 8
	cfg.ChunkBytes = 1 << 20
	s, err := stream.Open(ctx, cfg, uris, nil)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		s.Close()
		_ = cache.Wait(ctx) // entries are completed in the background
	}()
	files := s.Files()
	got := make([][][]byte, len(files))
	for i, f := range files {
		got[i] = make([][]byte, len(f.Tensors))
	}
	for {
		batch, err := s.Next(ctx, 0, -1)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, nil, err
		}
		for _, r := range batch {
			got[r.File][r.Tensor] = bytes.Clone(r.Data)
			r.Release()
		}
	}
	var sums, strategies []string
	for i, f := range files {
		h := sha256.New()
		for _, b := range got[i] {
			h.Write(b)
		}
		sums = append(sums, hex.EncodeToString(h.Sum(nil)))
		strategies = append(strategies, f.Strategy)
	}
	return sums, strategies, nil
}

// want is what load returns for the checkpoint bytes data.
func want(t testing.TB, data []byte) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "want.safetensors")
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sums, _, err := load(context.Background(), registry(t, "file", nil), path)
	if err != nil {
		t.Fatal(err)
	}
	return sums[0]
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// warnings collects an Opener's warnings.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) add(m string) { w.mu.Lock(); w.msgs = append(w.msgs, m); w.mu.Unlock() }
func (w *warnings) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.msgs)
}

func newOpener(t testing.TB, dir string, max int64, st *store, w *warnings) *cache.Opener {
	t.Helper()
	c, err := cache.Open(dir, max)
	if err != nil {
		t.Fatal(err)
	}
	o := &cache.Opener{Cache: c, Inner: registry(t, st.scheme, st.settings), Namespace: cache.Namespace(st.settings)}
	if w != nil {
		o.Warn = w.add
	} else {
		o.Warn = func(m string) { t.Log(m) }
	}
	return o
}

func entries(t testing.TB, dir string) []cache.Entry {
	t.Helper()
	c, err := cache.Open(dir, 1)
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// leftovers lists the cache's temporary files.
func leftovers(t testing.TB, dir string) []string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "v1", "*.tmp.*"))
	return m
}

// The first load writes the entry through; the second moves under 2% of the
// bytes over the wire and delivers the same bytes, read from the local file.
func TestSecondLoadIsLocal(t *testing.T) {
	data := model(t, 6<<20, 1)
	wantSum := want(t, data)
	for _, st := range stores(t) {
		t.Run(st.name, func(t *testing.T) {
			st.put(t, "model.safetensors", data)
			dir := t.TempDir()
			uri := st.uri("model.safetensors")

			before := st.proxy.BodyBytes()
			o := newOpener(t, dir, 0, st, nil)
			sums, _, err := load(ctxT(t), o, uri)
			if err != nil {
				t.Fatal(err)
			}
			first := st.proxy.BodyBytes() - before
			if sums[0] != wantSum {
				t.Fatalf("first load: wrong bytes")
			}
			if first < int64(len(data)) {
				t.Fatalf("first load moved %d bytes, fewer than the object's %d", first, len(data))
			}
			if n := o.Stats().Committed.Load(); n != 1 {
				t.Fatalf("committed %d entries, want 1", n)
			}
			if d := o.Stats().DirectBytes.Load(); cache.DirectAllowed(dir) && d < int64(len(data))*9/10 {
				t.Fatalf("%d of %d bytes written with O_DIRECT, want all but the ranges' partial pages", d, len(data))
			}
			es := entries(t, dir)
			if len(es) != 1 || es[0].URI != uri || es[0].Size != int64(len(data)) || es[0].Checksum == "" {
				t.Fatalf("entries after the first load: %+v", es)
			}

			o2 := newOpener(t, dir, 0, st, nil)
			before = st.proxy.BodyBytes()
			sums, strategies, err := load(ctxT(t), o2, uri)
			if err != nil {
				t.Fatal(err)
			}
			second := st.proxy.BodyBytes() - before
			if sums[0] != wantSum {
				t.Fatalf("second load: wrong bytes")
			}
			if second*50 >= int64(len(data)) {
				t.Fatalf("second load moved %d bytes over the wire, not under 2%% of %d", second, len(data))
			}
			if o2.Stats().Hits.Load() != 1 || strategies[0] == "" {
				t.Fatalf("second load: hits %d, strategy %q", o2.Stats().Hits.Load(), strategies[0])
			}
			if l := leftovers(t, dir); len(l) != 0 {
				t.Fatalf("temporary files left: %v", l)
			}
		})
	}
}

// A miss's object tells the engine that the ranges read into its memory are
// written with O_DIRECT from there (storage.PinsMemory), so that the engine
// backs that memory with huge pages as it does a local file's.
func TestMissPinsItsMemory(t *testing.T) {
	for _, st := range stores(t) {
		t.Run(st.name, func(t *testing.T) {
			// Larger than what Close fetches to complete an entry, so that
			// closing the object unread discards it at once.
			st.put(t, "model.safetensors", model(t, 8<<20, 4))
			dir := t.TempDir()
			obj, err := newOpener(t, dir, 0, st, &warnings{}).Open(ctxT(t), st.uri("model.safetensors"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				_ = obj.Close()
				_ = cache.Wait(context.Background())
			})
			p, ok := obj.(storage.PinsMemory)
			if want := cache.DirectAllowed(dir); !ok || p.PinsMemory() != want {
				t.Fatalf("the miss's object (%T) pins its memory: %v, want %v", obj, ok && p.PinsMemory(), want)
			}
		})
	}
}

// An object overwritten after it was cached is fetched again: its new
// bytes are delivered and its entry replaced.
func TestOverwrittenObjectIsRefetched(t *testing.T) {
	oldData, newData := model(t, 3<<20, 2), model(t, 3<<20, 3)
	oldSum, newSum := want(t, oldData), want(t, newData)
	if oldSum == newSum {
		t.Fatal("test data: two seeds gave the same bytes")
	}
	for _, st := range stores(t) {
		t.Run(st.name, func(t *testing.T) {
			dir := t.TempDir()
			uri := st.uri("over.safetensors")
			st.put(t, "over.safetensors", oldData)
			if sums, _, err := load(ctxT(t), newOpener(t, dir, 0, st, nil), uri); err != nil || sums[0] != oldSum {
				t.Fatalf("first load: %v", err)
			}
			old := entries(t, dir)
			st.put(t, "over.safetensors", newData) // same size, new bytes
			before := st.proxy.BodyBytes()
			o := newOpener(t, dir, 0, st, nil)
			sums, _, err := load(ctxT(t), o, uri)
			if err != nil {
				t.Fatal(err)
			}
			if sums[0] != newSum {
				t.Fatal("a stale entry was served: old bytes after the object was overwritten")
			}
			if moved := st.proxy.BodyBytes() - before; moved < int64(len(newData)) {
				t.Fatalf("moved %d bytes: the new version was not fetched", moved)
			}
			now := entries(t, dir)
			if len(now) != 1 || now[0].Name == old[0].Name || now[0].Version == old[0].Version {
				t.Fatalf("entries: before %+v, after %+v: want the old one replaced", old, now)
			}
			if sums, _, err := load(ctxT(t), newOpener(t, dir, 0, st, nil), uri); err != nil || sums[0] != newSum {
				t.Fatalf("load of the replaced entry: %v", err)
			}
		})
	}
}

// Least recently used entries go first when the limit is reached, but
// never one a stream is reading.
func TestEvictionUnderLimit(t *testing.T) {
	st := stores(t)[0]
	var sums [4]string
	var size int64
	for i := range 4 {
		d := model(t, 2<<20, uint64(10+i))
		size = int64(len(d))
		st.put(t, fmt.Sprintf("e%d.safetensors", i), d)
		sums[i] = want(t, d)
	}
	dir := t.TempDir()
	limit := size*2 + size/2 // two entries fit, not three
	loadOne := func(i int) {
		t.Helper()
		got, _, err := load(ctxT(t), newOpener(t, dir, limit, st, nil), st.uri(fmt.Sprintf("e%d.safetensors", i)))
		if err != nil || got[0] != sums[i] {
			t.Fatalf("load %d: %v", i, err)
		}
	}
	names := func() []string {
		var out []string
		for _, e := range entries(t, dir) {
			out = append(out, strings.TrimPrefix(e.URI, st.uri("")))
		}
		slices.Sort(out)
		return out
	}
	loadOne(0)
	time.Sleep(20 * time.Millisecond) // distinct LRU times
	loadOne(1)
	time.Sleep(20 * time.Millisecond)
	loadOne(2) // evicts e0, the least recently used
	if got := names(); !slices.Equal(got, []string{"e1.safetensors", "e2.safetensors"}) {
		t.Fatalf("after three loads under a two-entry limit: %v", got)
	}

	// e1 is now the least recently used; a stream reading it keeps it.
	cfg := stream.DefaultConfig(newOpener(t, dir, limit, st, nil))
	held, err := stream.Open(ctxT(t), cfg, []string{st.uri("e1.safetensors")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond)
	loadOne(3) // must evict e2, not e1 in use
	if got := names(); !slices.Equal(got, []string{"e1.safetensors", "e3.safetensors"}) {
		t.Fatalf("with e1 in use: %v", got)
	}
	held.Close()
	var total int64
	for _, e := range entries(t, dir) {
		total += e.Size
	}
	if total > limit {
		t.Fatalf("cache holds %d bytes, over its limit %d", total, limit)
	}
}

// childEnv runs this test binary as a loader (see TestMain).
const childEnv = "MODEL_STREAMER_CACHE_TEST_CHILD"

// childRequest is what a child loads.
type childRequest struct {
	Dir      string
	Scheme   string
	Settings storage.Settings
	URI      string
}

type childResult struct {
	Sum       string
	Hits      int64
	Writes    int64
	Committed int64
	Err       string
}

func TestMain(m *testing.M) {
	if req := os.Getenv(childEnv); req != "" {
		os.Exit(child(req))
	}
	testserver.Main(m)
}

// child loads one URI through a cache and prints a childResult.
func child(reqJSON string) int {
	var req childRequest
	if err := json.Unmarshal([]byte(reqJSON), &req); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var res childResult
	o, err := func() (*cache.Opener, error) {
		c, err := cache.Open(req.Dir, 0)
		if err != nil {
			return nil, err
		}
		reg := storage.NewRegistry()
		reg.Register("file", fs.New(fs.Options{}))
		var b storage.Backend
		switch req.Scheme {
		case "s3":
			b, err = s3.New(req.Settings)
		case "gs":
			b, err = gcs.New(req.Settings)
		case "az":
			b, err = azure.New(req.Settings)
		}
		reg.Register(req.Scheme, b)
		return &cache.Opener{Cache: c, Inner: reg, Namespace: cache.Namespace(req.Settings)}, err
	}()
	if err == nil {
		var sums []string
		sums, _, err = load(context.Background(), o, req.URI)
		if err == nil {
			res.Sum = sums[0]
		}
		res.Hits, res.Writes, res.Committed = o.Stats().Hits.Load(), o.Stats().Writes.Load(), o.Stats().Committed.Load()
	}
	if err != nil {
		res.Err = err.Error()
	}
	out, _ := json.Marshal(res)
	fmt.Println(string(out))
	return 0
}

// A distributed load reads a share of each object from the store and gets
// the rest from its peers: the share is written through, the peers' bytes
// are contributed, and the header, which no share covers, is fetched when
// the stream closes. The entry is then complete after one load, and the
// next load reads it locally.
func TestContributedBytesCompleteTheEntry(t *testing.T) {
	data := model(t, 6<<20, 30)
	wantSum := want(t, data)
	for _, st := range stores(t) {
		t.Run(st.name, func(t *testing.T) {
			st.put(t, "dist.safetensors", data)
			uri := st.uri("dist.safetensors")
			dir := t.TempDir()
			headerEnd := int64(8 + binary.LittleEndian.Uint64(data[:8]))
			mid := headerEnd + (int64(len(data))-headerEnd)/2

			before := st.proxy.BodyBytes()
			o := newOpener(t, dir, 0, st, nil)
			cfg := stream.DefaultConfig(o)
			cfg.ChunkBytes = 1 << 20
			s, err := stream.OpenRanges(ctxT(t), cfg, []stream.RangeRequest{
				{URI: uri, Offsets: []int64{headerEnd}, Sizes: []int64{mid - headerEnd}}})
			if err != nil {
				t.Fatal(err)
			}
			releaseAll(t, s)
			// The peers' share, as a distributed load receives it.
			for off := mid; off < int64(len(data)); off += 1 << 20 {
				end := min(off+1<<20, int64(len(data)))
				if !cache.Contribute(uri, off, data[off:end]) {
					t.Fatalf("Contribute(%d): no entry being written took it", off)
				}
			}
			s.Close()
			if err := cache.Wait(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			moved := st.proxy.BodyBytes() - before
			if moved >= mid+(1<<20) {
				t.Fatalf("moved %d bytes: more than the share and the header (%d)", moved, mid)
			}
			if o.Stats().Committed.Load() != 1 {
				t.Fatalf("committed %d entries, want 1", o.Stats().Committed.Load())
			}
			if cache.Contribute(uri, 0, data[:1]) {
				t.Fatal("Contribute took bytes after the entry was closed")
			}
			before = st.proxy.BodyBytes()
			sums, _, err := load(ctxT(t), newOpener(t, dir, 0, st, nil), uri)
			if err != nil || sums[0] != wantSum {
				t.Fatalf("load from the entry: %v", err)
			}
			if moved := st.proxy.BodyBytes() - before; moved*50 >= int64(len(data)) {
				t.Fatalf("the second load moved %d bytes", moved)
			}
		})
	}
}

// Contributed bytes that are not the object's fail the entry's check: the
// entry is discarded, never served.
func TestWrongContributionIsDiscarded(t *testing.T) {
	st := stores(t)[1] // fake-gcs: a CRC32C, checked by combining
	data := model(t, 3<<20, 31)
	st.put(t, "wrong.safetensors", data)
	uri := st.uri("wrong.safetensors")
	dir := t.TempDir()
	var w warnings
	o := newOpener(t, dir, 0, st, &w)
	cfg := stream.DefaultConfig(o)
	half := int64(len(data)) / 2
	s, err := stream.OpenRanges(ctxT(t), cfg, []stream.RangeRequest{{URI: uri, Offsets: []int64{0}, Sizes: []int64{half}}})
	if err != nil {
		t.Fatal(err)
	}
	releaseAll(t, s)
	bad := bytes.Clone(data[half:])
	bad[100] ^= 1
	if !cache.Contribute(uri, half, bad) {
		t.Fatal("no entry being written")
	}
	s.Close()
	if err := cache.Wait(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if e := entries(t, dir); len(e) != 0 || len(leftovers(t, dir)) != 0 {
		t.Fatalf("entries %+v, leftovers %v after a corrupt contribution", e, leftovers(t, dir))
	}
	if msgs := w.all(); len(msgs) != 1 || !strings.Contains(msgs[0], "checksum mismatch") {
		t.Fatalf("warnings %q", msgs)
	}
}

// A stream opening an entry this process is still completing (its fsync
// runs after the writing stream closed) waits for it and reads it locally.
func TestReopenWhileCompleting(t *testing.T) {
	st := stores(t)[0]
	data := model(t, 8<<20, 32)
	wantSum := want(t, data)
	st.put(t, "reopen.safetensors", data)
	uri := st.uri("reopen.safetensors")
	o := newOpener(t, t.TempDir(), 0, st, nil)
	cfg := stream.DefaultConfig(o)
	s, err := stream.Open(ctxT(t), cfg, []string{uri}, nil)
	if err != nil {
		t.Fatal(err)
	}
	releaseAll(t, s)
	s.Close() // the entry completes in the background; no Wait
	before := st.proxy.BodyBytes()
	sums, _, err := load(ctxT(t), o, uri)
	if err != nil || sums[0] != wantSum {
		t.Fatalf("reload: %v", err)
	}
	if moved := st.proxy.BodyBytes() - before; moved*50 >= int64(len(data)) || o.Stats().Hits.Load() != 1 {
		t.Fatalf("reload right after close: %d bytes over the wire, %d hits", moved, o.Stats().Hits.Load())
	}
}

// releaseAll takes every tensor of s and releases it.
func releaseAll(t *testing.T, s *stream.Stream) {
	t.Helper()
	for {
		batch, err := s.Next(ctxT(t), 0, -1)
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range batch {
			r.Release()
		}
	}
}
