package fetch

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/model-streamer/model-streamer/go/checksum"
	"github.com/model-streamer/model-streamer/go/integrity"
	"github.com/model-streamer/model-streamer/go/internal/faultproxy"
	"github.com/model-streamer/model-streamer/go/internal/testserver"
	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/fs"
	"github.com/model-streamer/model-streamer/go/storage/s3"
)

func TestMain(m *testing.M) { testserver.Main(m) }

// A download is verified like a stream: a flipped bit leaves nothing at the
// destination (nor a temporary file), for a CRC and for an MD5 ETag.
func TestDownloadVerifies(t *testing.T) {
	minio := testserver.SharedMinIO(t)
	minio.CreateBucket(t, "fetch")
	p := faultproxy.Start(t, minio.Endpoint)
	nowhere := filepath.Join(t.TempDir(), "none")
	b, err := s3.New(storage.Settings{s3.SettingEndpoint: p.URL(), s3.SettingAccessKeyID: minio.AccessKey,
		s3.SettingSecretAccessKey: minio.SecretKey, s3.SettingRegion: minio.Region, s3.SettingIMDSDisabled: "true",
		s3.SettingConfigFile: nowhere, s3.SettingCredentialsFile: nowhere})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 200_000) // 3.2 MB: many 256 KiB reads
	data[12345] = 0xff
	minio.PutObjectChecksum(t, "fetch", "crc.bin", data, checksum.CRC64NVME)
	minio.PutObject(t, "fetch", "md5.bin", data)
	opts := Options{Concurrency: 4, ChunkBytes: 256 << 10}
	for _, key := range []string{"crc.bin", "md5.bin"} {
		for _, flip := range []bool{false, true} {
			for _, mode := range []integrity.Mode{integrity.Auto, integrity.Off, integrity.Require} {
				verified := mode != integrity.Off
				name := key + "/" + mode.String()
				if flip {
					name += "/flip"
				}
				t.Run(name, func(t *testing.T) {
					dir := t.TempDir()
					dst := filepath.Join(dir, "out", key)
					if flip {
						p.Set(faultproxy.Fault{Flip: &faultproxy.Flip{Offset: int64(len(data)) - 7, Bit: 2, Count: 1}})
						t.Cleanup(p.Clear)
					}
					uri := "s3://fetch/" + key
					obj, err := b.Open(context.Background(), uri)
					if err != nil {
						t.Fatal(err)
					}
					defer obj.Close()
					o := opts
					o.Verify, o.URI = mode, uri
					err = ToFile(context.Background(), obj, dst, o)
					got, readErr := os.ReadFile(dst)
					if flip && verified {
						var me *integrity.MismatchError
						if !errors.As(err, &me) || !strings.Contains(err.Error(), uri) {
							t.Fatalf("got %v, want a MismatchError naming %s", err, uri)
						}
						if readErr == nil {
							t.Fatal("a corrupt download was left at its final name")
						}
						if left, _ := os.ReadDir(filepath.Dir(dst)); len(left) != 0 {
							t.Fatalf("left behind: %v", left)
						}
						return
					}
					if err != nil || readErr != nil {
						t.Fatalf("download: %v, %v", err, readErr)
					}
					if equal := bytes.Equal(got, data); equal == flip {
						t.Fatalf("downloaded bytes equal to the object: %v (flip %v, mode %v)", equal, flip, mode)
					}
				})
			}
		}
	}
}

// require refuses an object without a checksum before writing anything.
func TestDownloadRequireRefusesLocalFile(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src.bin")
	if err := os.WriteFile(src, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	obj, err := fs.New(fs.Options{}).Open(context.Background(), src)
	if err != nil {
		t.Fatal(err)
	}
	defer obj.Close()
	dst := filepath.Join(dir, "out", "dst.bin")
	err = ToFile(context.Background(), obj, dst, Options{Verify: integrity.Require, URI: src})
	if !errors.Is(err, integrity.ErrChecksum) || !strings.Contains(err.Error(), src) {
		t.Fatalf("got %v", err)
	}
	if _, err := os.Stat(filepath.Dir(dst)); !os.IsNotExist(err) {
		t.Fatalf("require wrote before refusing: %v", err)
	}
}
