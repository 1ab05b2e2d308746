package s3

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/model-streamer/model-streamer/go/storage"
)

// TestUnsigned checks RUNAI_STREAMER_S3_UNSIGNED against MinIO: a bucket
// with an anonymous-read policy streams and lists without credentials, a
// private bucket refuses with a permission error naming the object, and no
// request carries a signature, even with keys in the settings.
func TestUnsigned(t *testing.T) {
	e := newEnv(t) // "models": private
	const public = "public-models"
	e.srv.CreateBucket(t, public)
	e.srv.AllowAnonymousRead(t, public)
	data := randomBytes(5<<20+321, 42)
	e.srv.PutObject(t, public, "llama/model-00001.safetensors", data)
	e.srv.PutObject(t, public, "llama/model-00002.safetensors", data[:1000])
	e.srv.PutObject(t, public, "llama/sub/nested.bin", data[:10])
	e.put(t, "private.bin", 1000)

	// A proxy in front of MinIO records the Authorization header of every
	// request.
	target, _ := url.Parse(e.srv.Endpoint)
	var mu sync.Mutex
	var auths []string
	rp := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		auths = append(auths, r.Method+" "+r.URL.Path+" auth="+r.Header.Get("Authorization"))
		mu.Unlock()
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)

	for _, c := range []struct {
		name     string
		settings storage.Settings
	}{
		{"no keys", storage.Settings{SettingEndpoint: front.URL, SettingRegion: e.srv.Region,
			SettingIMDSDisabled: "true", SettingUnsigned: "1"}},
		// Keys, a profile or web identity present are not used.
		{"keys ignored", storage.Settings{SettingEndpoint: front.URL, SettingRegion: e.srv.Region,
			SettingIMDSDisabled: "true", SettingUnsigned: "true",
			SettingAccessKeyID: e.srv.AccessKey, SettingSecretAccessKey: e.srv.SecretKey,
			SettingWebIdentityFile: "/nonexistent/token", SettingRoleARN: "arn:aws:iam::1:role/r"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			mu.Lock()
			auths = nil
			mu.Unlock()
			b, err := New(c.settings)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			ctx := context.Background()
			uri := "s3://" + public + "/llama/model-00001.safetensors"
			o := open(t, b, uri)
			got := make([]byte, o.Size())
			if n, err := o.ReadAt(ctx, got, 0); n != len(data) || (err != nil && n != len(got)) {
				t.Fatalf("ReadAt = %d, %v", n, err)
			}
			if !bytes.Equal(got, data) {
				t.Fatal("unsigned read: bytes differ")
			}
			infos, err := b.(storage.Lister).List(ctx, "s3://"+public+"/llama", false)
			if err != nil {
				t.Fatalf("List: %v", err)
			}
			want := fmt.Sprint([]storage.ObjectInfo{
				{URI: "s3://" + public + "/llama/model-00001.safetensors", Size: int64(len(data))},
				{URI: "s3://" + public + "/llama/model-00002.safetensors", Size: 1000},
			})
			if fmt.Sprint(infos) != want {
				t.Fatalf("List = %v, want %v", infos, want)
			}

			private := e.uri("private.bin")
			_, err = b.Open(ctx, private)
			wantErr(t, err, storage.PermissionDenied, private, "403")
			_, err = b.(storage.Lister).List(ctx, "s3://"+e.bucket+"/", false)
			wantErr(t, err, storage.PermissionDenied, "s3://"+e.bucket+"/")

			mu.Lock()
			defer mu.Unlock()
			if len(auths) < 4 {
				t.Fatalf("requests seen: %q", auths)
			}
			for _, a := range auths {
				if !strings.HasSuffix(a, " auth=") {
					t.Errorf("request %q is signed", a)
				}
			}
		})
	}

	// Unsigned off ("0") signs: the private object opens with the keys.
	b := e.backend(t, e.srv.Endpoint, SettingUnsigned, "0")
	open(t, b, e.uri("private.bin"))
}

// TestWebIdentity checks AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN and
// AWS_ROLE_SESSION_NAME: the backend exchanges the token at STS (a loopback
// stand-in here, named by the SDK's own AWS_ENDPOINT_URL_STS) for the
// credentials it then signs with.
func TestWebIdentity(t *testing.T) {
	e := newEnv(t)
	data := e.put(t, "web-identity/object", 1000)
	var mu sync.Mutex
	var forms []url.Values
	sts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		mu.Lock()
		forms = append(forms, r.PostForm)
		mu.Unlock()
		w.Header().Set("Content-Type", "text/xml")
		fmt.Fprintf(w, `<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
<AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>%s</AccessKeyId><SecretAccessKey>%s</SecretAccessKey>
<SessionToken></SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResult>
<ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></AssumeRoleWithWebIdentityResponse>`, e.srv.AccessKey, e.srv.SecretKey)
	}))
	t.Cleanup(sts.Close)
	t.Setenv("AWS_ENDPOINT_URL_STS", sts.URL)

	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("the-oidc-token"), 0o600); err != nil {
		t.Fatal(err)
	}
	b := storage.Settings{SettingEndpoint: e.srv.Endpoint, SettingRegion: e.srv.Region, SettingIMDSDisabled: "true",
		SettingWebIdentityFile: tokenFile, SettingRoleARN: "arn:aws:iam::123456789012:role/reader",
		SettingRoleSessionName: "model-streamer-test"}
	be, err := New(b)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	o := open(t, be, e.uri("web-identity/object"))
	got := make([]byte, len(data))
	if n, err := o.ReadAt(context.Background(), got, 0); n != len(data) || !bytes.Equal(got, data) {
		t.Fatalf("ReadAt = %d, %v (equal %v)", n, err, bytes.Equal(got, data))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(forms) == 0 {
		t.Fatal("STS was never asked")
	}
	f := forms[0]
	for k, want := range map[string]string{"Action": "AssumeRoleWithWebIdentity", "WebIdentityToken": "the-oidc-token",
		"RoleArn": "arn:aws:iam::123456789012:role/reader", "RoleSessionName": "model-streamer-test"} {
		if f.Get(k) != want {
			t.Errorf("STS request %s = %q, want %q", k, f.Get(k), want)
		}
	}
}
