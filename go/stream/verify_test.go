package stream_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/integrity"
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

func TestMain(m *testing.M) { testserver.Main(m) }

// object is one checkpoint file stored on a test server, reached through a
// fault proxy.
type object struct {
	name  string
	uri   string
	alg   checksum.Algorithm // what the engine verifies it against ("": nothing usable)
	reg   *storage.Registry
	proxy *faultproxy.Proxy
	// the checkpoint
	data       []byte
	want       map[string][]byte
	dataOffset int64
}

// integrityCheckpoint writes a checkpoint of about 2 MiB: many ranges at
// the 128 KiB chunks the tests read with.
func integrityCheckpoint(t *testing.T) ([]byte, map[string][]byte) {
	t.Helper()
	rng := rand.New(rand.NewPCG(42, 1))
	tensors := sttest.Random(rng, "w", 40, 60000)
	tensors = append(tensors, sttest.Tensor{Name: "w.last", DType: "U8", Shape: []int64{3000}})
	path := filepath.Join(t.TempDir(), "model.safetensors")
	want, err := sttest.Write(path, tensors, 42)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data, want
}

// objects stores the checkpoint on every server in every way each one
// keeps (or does not keep) a checksum.
func objects(t *testing.T) []*object {
	t.Helper()
	data, want := integrityCheckpoint(t)
	dataOffset := 8 + int64(binary.LittleEndian.Uint64(data))
	nowhere := filepath.Join(t.TempDir(), "none")
	var out []*object
	add := func(name, uri string, alg checksum.Algorithm, reg *storage.Registry, p *faultproxy.Proxy) {
		out = append(out, &object{name: name, uri: uri, alg: alg, reg: reg, proxy: p,
			data: data, want: want, dataOffset: dataOffset})
	}

	minio := testserver.SharedMinIO(t)
	bucket := fmt.Sprintf("verify-%d", time.Now().UnixNano())
	minio.CreateBucket(t, bucket)
	mp := faultproxy.Start(t, minio.Endpoint)
	sb, err := s3.New(storage.Settings{s3.SettingEndpoint: mp.URL(), s3.SettingAccessKeyID: minio.AccessKey,
		s3.SettingSecretAccessKey: minio.SecretKey, s3.SettingRegion: minio.Region, s3.SettingIMDSDisabled: "true",
		s3.SettingConfigFile: nowhere, s3.SettingCredentialsFile: nowhere})
	if err != nil {
		t.Fatal(err)
	}
	sreg := storage.NewRegistry()
	sreg.Register("s3", sb)
	minio.PutObject(t, bucket, "plain.safetensors", data)
	add("s3/etag-md5", "s3://"+bucket+"/plain.safetensors", checksum.MD5, sreg, mp)
	for _, alg := range []checksum.Algorithm{checksum.CRC32, checksum.CRC32C, checksum.CRC64NVME} {
		key := string(alg) + ".safetensors"
		minio.PutObjectChecksum(t, bucket, key, data, alg)
		add("s3/"+string(alg), "s3://"+bucket+"/"+key, alg, sreg, mp)
	}

	fake := testserver.SharedFakeGCS(t)
	fake.CreateBucket(t, bucket)
	gp := faultproxy.Start(t, "http://"+fake.Host)
	gb, err := gcs.New(storage.Settings{gcs.SettingEndpoint: gp.URL() + "/storage/v1/"})
	if err != nil {
		t.Fatal(err)
	}
	greg := storage.NewRegistry()
	greg.Register("gs", gb)
	fake.PutObject(t, bucket, "model.safetensors", data)
	add("gs/crc32c", "gs://"+bucket+"/model.safetensors", checksum.CRC32C, greg, gp)

	az := testserver.SharedAzurite(t)
	az.CreateContainer(t, bucket)
	ap := faultproxy.Start(t, strings.TrimSuffix(az.BlobEndpoint, "/"+az.AccountName))
	ab, err := azure.New(storage.Settings{azure.SettingEndpoint: ap.URL() + "/" + az.AccountName,
		azure.SettingAccountKey: az.AccountKey})
	if err != nil {
		t.Fatal(err)
	}
	areg := storage.NewRegistry()
	areg.Register("az", ab)
	az.PutBlob(t, bucket, "model.safetensors", data)
	add("az/content-md5", "az://"+bucket+"/model.safetensors", checksum.MD5, areg, ap)
	half := len(data) / 2
	az.PutBlockList(t, bucket, "blocks.safetensors", [][]byte{data[:half], data[half:]}, nil)
	add("az/blocks-no-md5", "az://"+bucket+"/blocks.safetensors", "", areg, ap)
	return out
}

// algUnder is what the engine verifies o against under mode (no sidecar
// here: with one that covers the read, auto leaves an MD5 out).
func (o *object) algUnder(mode integrity.Mode) checksum.Algorithm {
	if mode == integrity.Off {
		return ""
	}
	return o.alg
}

func (o *object) config(mode integrity.Mode) stream.Config {
	cfg := stream.DefaultConfig(o.reg)
	cfg.ChunkBytes, cfg.Concurrency, cfg.Verify = 128<<10, 4, mode
	return cfg
}

// consume reads the whole stream, comparing what it can: it returns the
// error that ended it (nil at io.EOF), the tensors seen and how many had
// bytes other than the file's.
func consume(t *testing.T, s *stream.Stream, want map[string][]byte) (err error, seen, wrong int) {
	t.Helper()
	files := s.Files()
	for {
		batch, err := s.Next(context.Background(), 0, 30*time.Second)
		if err == io.EOF {
			return nil, seen, wrong
		}
		if err != nil {
			return err, seen, wrong
		}
		if batch == nil {
			t.Fatal("timed out waiting for tensors")
		}
		for _, r := range batch {
			seen++
			if !bytes.Equal(r.Data, want[files[r.File].Tensors[r.Tensor].Name]) {
				wrong++
			}
			r.Release()
		}
	}
}

// Every server, every way of storing, every mode, with no fault: bytes
// exact, and verified exactly where the store keeps a usable checksum.
func TestVerifyCleanObjects(t *testing.T) {
	for _, o := range objects(t) {
		for _, mode := range []integrity.Mode{integrity.Auto, integrity.Off, integrity.Require} {
			t.Run(o.name+"/"+mode.String(), func(t *testing.T) {
				s, err := stream.Open(context.Background(), o.config(mode), []string{o.uri}, nil)
				if mode == integrity.Require && o.alg == "" {
					var ue *integrity.UnverifiableError
					if !errors.As(err, &ue) || !errors.Is(err, integrity.ErrChecksum) || !strings.Contains(err.Error(), o.uri) {
						t.Fatalf("require without a checksum: got %v, want an UnverifiableError naming the object", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				v := s.Files()[0].Verify
				wantAlg := o.algUnder(mode)
				if v.Algorithm != wantAlg || (wantAlg == "" && v.Skipped == "") {
					t.Fatalf("Verify = %+v, want algorithm %q", v, wantAlg)
				}
				err, seen, wrong := consume(t, s, o.want)
				if err != nil || seen != len(o.want) || wrong != 0 {
					t.Fatalf("err %v, %d of %d tensors, %d wrong", err, seen, len(o.want), wrong)
				}
			})
		}
	}
}

// flips are the corruptions the tests inject: a bit of the header (a
// tensor's name: still a valid header), of the first tensor (in every
// response that carries it, so in the header read and in the range read),
// of a byte in the middle and of the last byte of the object (once).
func flips(o *object) []struct {
	where string
	flip  faultproxy.Flip
} {
	name := bytes.Index(o.data[:o.dataOffset], []byte(`"w.1`)) + 1
	return []struct {
		where string
		flip  faultproxy.Flip
	}{
		{"header", faultproxy.Flip{Offset: int64(name), Bit: 5, Count: 1}},
		{"first", faultproxy.Flip{Offset: o.dataOffset + 3, Bit: 0, Count: faultproxy.Always}},
		{"middle", faultproxy.Flip{Offset: int64(len(o.data)) / 2, Bit: 6, Count: 1}},
		{"last", faultproxy.Flip{Offset: int64(len(o.data)) - 1, Bit: 1, Count: 1}},
	}
}

// A bit flipped on the wire: with a checksum the stream fails naming the
// object, the algorithm and both values, and never ends normally; off (and
// an object without checksum) delivers the corrupt bytes, which is what off
// means.
func TestVerifyDetectsFlippedBits(t *testing.T) {
	for _, o := range objects(t) {
		for _, f := range flips(o) {
			modes := []integrity.Mode{integrity.Auto, integrity.Off}
			if o.alg == checksum.MD5 {
				modes = append(modes, integrity.Require)
			}
			for _, mode := range modes {
				t.Run(o.name+"/"+f.where+"/"+mode.String(), func(t *testing.T) {
					flip := f.flip
					_, before := o.proxy.Stats()
					o.proxy.Set(faultproxy.Fault{Match: notSidecar, Flip: &flip})
					t.Cleanup(o.proxy.Clear)
					s, err := stream.Open(context.Background(), o.config(mode), []string{o.uri}, nil)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { s.Close() })
					err, seen, wrong := consume(t, s, o.want)
					if _, injected := o.proxy.Stats(); injected == before {
						t.Fatal("the proxy flipped no bit")
					}
					if o.algUnder(mode) != "" {
						var me *integrity.MismatchError
						if !errors.As(err, &me) {
							t.Fatalf("got %v after %d tensors, want a MismatchError (%+v)", err, seen, s.Files()[0])
						}
						for _, part := range []string{o.uri, "checksum mismatch", string(o.alg) + " expected"} {
							if !strings.Contains(err.Error(), part) {
								t.Fatalf("message %q lacks %q", err, part)
							}
						}
						if me.Want.Algorithm != o.alg || bytes.Equal(me.Want.Value, me.Computed) {
							t.Fatalf("mismatch %+v", me)
						}
						if seen >= len(o.want) {
							t.Fatalf("all %d tensors were delivered before the error", seen)
						}
						return
					}
					// Unverified: the stream ends normally, and a tensor is wrong
					// (the header flip renames one instead).
					if err != nil {
						t.Fatalf("unverified stream failed: %v", err)
					}
					if f.where != "header" && wrong != 1 {
						t.Fatalf("%d wrong tensors delivered, want the 1 corrupted", wrong)
					}
				})
			}
		}
	}
}

// A flip in the part of the speculative header read that holds tensor
// bytes corrupts nothing delivered: those bytes are read again into the
// arena, and only that read is hashed. The stream verifies and succeeds.
func TestVerifyIgnoresUnusedHeaderReadBytes(t *testing.T) {
	for _, o := range objects(t) {
		if o.alg == "" || !strings.HasPrefix(o.name, "s3/") {
			continue
		}
		t.Run(o.name, func(t *testing.T) {
			_, before := o.proxy.Stats()
			o.proxy.Set(faultproxy.Fault{Match: notSidecar, Flip: &faultproxy.Flip{Offset: o.dataOffset + 3, Count: 1}})
			t.Cleanup(o.proxy.Clear)
			s, err := stream.Open(context.Background(), o.config(integrity.Auto), []string{o.uri}, nil)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			err, seen, wrong := consume(t, s, o.want)
			if _, injected := o.proxy.Stats(); err != nil || seen != len(o.want) || wrong != 0 || injected != before+1 {
				t.Fatalf("err %v, %d tensors, %d wrong, %d flips", err, seen, wrong, injected)
			}
		})
	}
}

// Part of an object: auto reads it unverified, require refuses it at open.
func TestVerifyPartialRequests(t *testing.T) {
	o := objects(t)[1] // s3/crc32
	var names []string
	for n := range o.want {
		names = append(names, n)
	}
	names = names[:5]
	s, err := stream.Open(context.Background(), o.config(integrity.Auto), []string{o.uri}, names)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v := s.Files()[0].Verify; v.Algorithm != "" || !strings.Contains(v.Skipped, "tensor_names") {
		t.Fatalf("Verify = %+v, want skipped for tensor_names", v)
	}
	if err, seen, wrong := consume(t, s, o.want); err != nil || seen != len(names) || wrong != 0 {
		t.Fatalf("err %v, %d tensors, %d wrong", err, seen, wrong)
	}
	_, err = stream.Open(context.Background(), o.config(integrity.Require), []string{o.uri}, names)
	var ue *integrity.UnverifiableError
	if !errors.As(err, &ue) || !strings.Contains(err.Error(), o.uri) || !strings.Contains(err.Error(), "tensor_names") {
		t.Fatalf("require with tensor_names: %v", err)
	}
	// Every tensor named is the whole object: verified.
	var all []string
	for n := range o.want {
		all = append(all, n)
	}
	s2, err := stream.Open(context.Background(), o.config(integrity.Require), []string{o.uri}, all)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if v := s2.Files()[0].Verify; v.Algorithm != checksum.CRC32 {
		t.Fatalf("every tensor named: Verify = %+v", v)
	}
}

// Byte ranges: verified when they cover the object, flips then fail the
// stream; ranges that leave bytes out are read unverified.
func TestVerifyRanges(t *testing.T) {
	for _, o := range objects(t) {
		if o.alg == "" {
			continue
		}
		size := int64(len(o.data))
		whole := stream.RangeRequest{URI: o.uri, Offsets: []int64{size / 3, 0, size / 2, 100}, Sizes: []int64{size - size/3, size / 2, 0, 1000}}
		part := stream.RangeRequest{URI: o.uri, Offsets: []int64{0, 5000}, Sizes: []int64{4000, 1000}}
		mode := integrity.Auto
		if o.algUnder(mode) == "" {
			mode = integrity.Require // MD5
		}
		t.Run(o.name, func(t *testing.T) {
			for _, c := range []struct {
				req      stream.RangeRequest
				verified bool
			}{{whole, true}, {part, false}} {
				if !c.verified && mode == integrity.Require {
					continue
				}
				o.proxy.Set(faultproxy.Fault{Match: notSidecar, Flip: &faultproxy.Flip{Offset: 4500, Count: faultproxy.Always}})
				s, err := stream.OpenRanges(context.Background(), o.config(mode), []stream.RangeRequest{c.req})
				if err != nil {
					t.Fatal(err)
				}
				if v := s.Files()[0].Verify; (v.Algorithm != "") != c.verified {
					t.Fatalf("Verify = %+v, want verified %v", v, c.verified)
				}
				var got error
				for got == nil {
					var batch []stream.Ready
					batch, got = s.Next(context.Background(), 0, 30*time.Second)
					for _, r := range batch {
						r.Release()
					}
				}
				s.Close()
				o.proxy.Clear()
				if c.verified && !errors.Is(got, integrity.ErrChecksum) {
					t.Fatalf("covering ranges with a flip: %v", got)
				}
				if !c.verified && got != io.EOF {
					t.Fatalf("partial ranges: %v", got)
				}
			}
			_, err := stream.OpenRanges(context.Background(), o.config(integrity.Require), []stream.RangeRequest{part})
			if !errors.Is(err, integrity.ErrChecksum) || !strings.Contains(err.Error(), "ranges do not cover") {
				t.Fatalf("require with partial ranges: %v", err)
			}
		})
	}
}

// Local files keep no checksum: auto reads them (unverified), require
// refuses them before reading.
func TestVerifyLocalFiles(t *testing.T) {
	cp := writeCheckpoint(t, 5, 2, 10, 1000)
	cfg := stream.DefaultConfig(registry(fs.Auto))
	s, err := stream.Open(context.Background(), cfg, cp.paths, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v := s.Files()[0].Verify; v.Algorithm != "" || !strings.Contains(v.Skipped, "local files") {
		t.Fatalf("Verify = %+v", v)
	}
	drain(t, s, cp.want, false)
	cfg.Verify = integrity.Require
	if _, err := stream.Open(context.Background(), cfg, cp.paths, nil); !errors.Is(err, integrity.ErrChecksum) ||
		!strings.Contains(err.Error(), cp.paths[0]) {
		t.Fatalf("require on local files: %v", err)
	}
}

// MD5 verification sees the bytes in offset order whatever order the reads
// complete in: many readers, small chunks, and a tight memory limit.
func TestVerifyMD5InOrder(t *testing.T) {
	o := objects(t)[0] // s3/etag-md5
	if o.alg != checksum.MD5 {
		t.Fatalf("objects()[0] is %s", o.name)
	}
	sum := md5.Sum(o.data)
	for _, c := range []struct {
		limit int64
		conc  int
	}{{stream.Unlimited, 16}, {stream.LargestTensor, 8}, {1 << 20, 3}} {
		cfg := o.config(integrity.Require)
		cfg.MemoryLimit, cfg.Concurrency, cfg.ChunkBytes = c.limit, c.conc, 64<<10
		s, err := stream.Open(context.Background(), cfg, []string{o.uri}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if v := s.Files()[0].Verify; v.Expected != checksum.Format(sum[:]) {
			t.Fatalf("Verify = %+v", v)
		}
		err, seen, wrong := consume(t, s, o.want)
		s.Close()
		if err != nil || seen != len(o.want) || wrong != 0 {
			t.Fatalf("limit %d: err %v, %d tensors, %d wrong", c.limit, err, seen, wrong)
		}
	}
}

// An object with no tensor bytes is all header: verified at open, so a
// flip fails Open itself.
func TestVerifyHeaderOnlyObject(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty.safetensors")
	if _, err := sttest.Write(path, []sttest.Tensor{{Name: "nothing", DType: "F32", Shape: []int64{0, 3}}}, 1); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	o := objects(t)[2] // s3/crc32c: its registry and proxy
	minio := testserver.SharedMinIO(t)
	bucket := strings.TrimPrefix(o.uri, "s3://")
	bucket = bucket[:strings.Index(bucket, "/")]
	minio.PutObjectChecksum(t, bucket, "empty.safetensors", data, checksum.CRC32C)
	uri := "s3://" + bucket + "/empty.safetensors"
	s, err := stream.Open(context.Background(), o.config(integrity.Require), []string{uri}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v := s.Files()[0].Verify; v.Algorithm != checksum.CRC32C {
		t.Fatalf("Verify = %+v", v)
	}
	if err, seen, _ := consume(t, s, map[string][]byte{"nothing": {}}); err != nil || seen != 1 {
		t.Fatalf("err %v, %d tensors", err, seen)
	}
	s.Close()
	name := bytes.Index(data, []byte(`"nothing"`)) + 1
	o.proxy.Set(faultproxy.Fault{Match: notSidecar, Flip: &faultproxy.Flip{Offset: int64(name), Bit: 5, Count: 1}})
	t.Cleanup(o.proxy.Clear)
	_, err = stream.Open(context.Background(), o.config(integrity.Auto), []string{uri}, nil)
	var me *integrity.MismatchError
	if !errors.As(err, &me) || !strings.Contains(err.Error(), uri) {
		t.Fatalf("flipped header: %v", err)
	}
}

// notSidecar matches the requests flips apply to: ranged reads of the
// checkpoint, not the lookup of its sidecar (a 404 body that may be long
// enough to carry the flipped offset).
func notSidecar(r *http.Request) bool {
	return faultproxy.IsRangedGet(r) && !strings.HasSuffix(r.URL.Path, integrity.SidecarSuffix)
}
