package testserver

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"net/url"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

// AzuriteServer is a running Azurite blob service.
type AzuriteServer struct {
	BlobEndpoint     string // "http://127.0.0.1:PORT/devstoreaccount1"
	AccountName      string // "devstoreaccount1"
	AccountKey       string // the emulator's well-known key
	ConnectionString string // for azblob.NewClientFromConnectionString
}

// The Azure Storage emulator's documented development account. The key is
// public and only ever valid against an emulator.
const (
	AzuriteAccountName = "devstoreaccount1"
	AzuriteAccountKey  = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// azuriteAPIVersion is the x-ms-version the helpers send (Azurite runs with
// --skipApiVersionCheck, so any client version is accepted).
const azuriteAPIVersion = "2021-12-02"

// Azurite starts Azurite's blob service (azurite-blob, in-memory
// persistence, telemetry off, API version check off) for t and stops it
// when t ends. Node.js must be on PATH. No containers exist yet: create them
// with CreateContainer or an Azure client.
func Azurite(t testing.TB) *AzuriteServer {
	t.Helper()
	_, ports := start(t, azuriteSpec(t))
	return newAzuriteServer(ports)
}

// SharedAzurite returns the test binary's shared Azurite, starting it on
// first use; see Main. Without Main it is Azurite(t).
func SharedAzurite(t testing.TB) *AzuriteServer {
	t.Helper()
	srv, ok := sharedServer(t, "azurite", azuriteSpec(t), func(ports []int) any { return newAzuriteServer(ports) })
	if !ok {
		return Azurite(t)
	}
	return srv.(*AzuriteServer)
}

func newAzuriteServer(ports []int) *AzuriteServer {
	ep := "http://" + hostPort(ports[0]) + "/" + AzuriteAccountName
	return &AzuriteServer{
		BlobEndpoint: ep,
		AccountName:  AzuriteAccountName,
		AccountKey:   AzuriteAccountKey,
		ConnectionString: "DefaultEndpointsProtocol=http;AccountName=" + AzuriteAccountName +
			";AccountKey=" + AzuriteAccountKey + ";BlobEndpoint=" + ep + ";",
	}
}

func azuriteSpec(t testing.TB) spec {
	t.Helper()
	main := tool(t, "Azurite", "azurite", "node_modules", "azurite", "dist", "src", "blob", "main.js")
	node, err := exec.LookPath("node")
	if err != nil {
		missing(t, "Node.js (for Azurite)", "node on PATH")
	}
	return spec{
		name:   "azurite-blob",
		nports: 1,
		command: func(ports []int, dir string) ([]string, []string) {
			argv := []string{node, main,
				"--blobHost", "127.0.0.1",
				"--blobPort", strconv.Itoa(ports[0]),
				// Its working directory is a fresh temp dir; nothing is
				// persisted (--location is refused with this).
				"--inMemoryPersistence",
				"--skipApiVersionCheck",
				"--disableTelemetry",
				"--disableProductStyleUrl",
				"--silent",
			}
			return argv, nil
		},
		ready: func(c *http.Client, ports []int) bool {
			// Any HTTP answer (an unauthenticated request is refused)
			// means the service listens.
			return httpOK(c, "http://"+hostPort(ports[0])+"/"+AzuriteAccountName+"?comp=list")
		},
	}
}

// CreateContainer creates container, failing t on error.
func (s *AzuriteServer) CreateContainer(t testing.TB, container string) {
	t.Helper()
	s.do(t, http.MethodPut, "/"+container, url.Values{"restype": {"container"}}, nil, nil, http.StatusCreated)
}

// PutBlob stores data as the block blob container/name, failing t on error.
func (s *AzuriteServer) PutBlob(t testing.TB, container, name string, data []byte) {
	t.Helper()
	h := http.Header{"X-Ms-Blob-Type": {"BlockBlob"}, "Content-Type": {"application/octet-stream"}}
	s.do(t, http.MethodPut, "/"+container+"/"+name, nil, h, data, http.StatusCreated)
}

// Sign signs r with Shared Key authorization for this server's account:
// it sets x-ms-date and, if absent, x-ms-version.
func (s *AzuriteServer) Sign(r *http.Request) {
	SignSharedKey(r, s.AccountName, s.AccountKey, time.Now())
}

func (s *AzuriteServer) do(t testing.TB, method, path string, q url.Values, h http.Header, body []byte, want int) {
	t.Helper()
	u := s.BlobEndpoint + (&url.URL{Path: path}).EscapedPath()
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatalf("testserver: azurite %s %s: %v", method, u, err)
	}
	req.ContentLength = int64(len(body))
	for k, v := range h {
		req.Header[k] = v
	}
	s.Sign(req)
	resp, err := loopbackClient(60 * time.Second).Do(req)
	if err != nil {
		t.Fatalf("testserver: azurite %s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != want {
		t.Fatalf("testserver: azurite %s %s: %s: %s", method, u, resp.Status, msg)
	}
}

// SignSharedKey signs r with Azure Storage Shared Key authorization
// (Blob service, version 2015-02-21 and later rules) at time now. The
// canonicalized resource is /ACCOUNT followed by r's path, which for the
// emulator's path-style URLs already starts with /ACCOUNT.
func SignSharedKey(r *http.Request, account, key string, now time.Time) {
	r.Header.Set("X-Ms-Date", now.UTC().Format(http.TimeFormat))
	if r.Header.Get("X-Ms-Version") == "" {
		r.Header.Set("X-Ms-Version", azuriteAPIVersion)
	}
	length := ""
	if r.ContentLength > 0 {
		length = strconv.FormatInt(r.ContentLength, 10)
	}
	var sb strings.Builder
	sb.WriteString(r.Method + "\n")
	for _, v := range []string{
		r.Header.Get("Content-Encoding"),
		r.Header.Get("Content-Language"),
		length,
		r.Header.Get("Content-Md5"),
		r.Header.Get("Content-Type"),
		"", // Date: x-ms-date is used instead
		r.Header.Get("If-Modified-Since"),
		r.Header.Get("If-Match"),
		r.Header.Get("If-None-Match"),
		r.Header.Get("If-Unmodified-Since"),
		r.Header.Get("Range"),
	} {
		sb.WriteString(v + "\n")
	}
	var names []string
	for k := range r.Header {
		if lk := strings.ToLower(k); strings.HasPrefix(lk, "x-ms-") {
			names = append(names, lk)
		}
	}
	sort.Strings(names)
	for _, k := range names {
		sb.WriteString(k + ":" + strings.TrimSpace(r.Header.Get(k)) + "\n")
	}
	sb.WriteString("/" + account + r.URL.EscapedPath())
	q := r.URL.Query()
	keys := make([]string, 0, len(q))
	for k := range q {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return strings.ToLower(keys[i]) < strings.ToLower(keys[j]) })
	for _, k := range keys {
		vs := append([]string(nil), q[k]...)
		sort.Strings(vs)
		sb.WriteString("\n" + strings.ToLower(k) + ":" + strings.Join(vs, ","))
	}
	raw, _ := base64.StdEncoding.DecodeString(key)
	m := hmac.New(sha256.New, raw)
	m.Write([]byte(sb.String()))
	r.Header.Set("Authorization", "SharedKey "+account+":"+base64.StdEncoding.EncodeToString(m.Sum(nil)))
}
