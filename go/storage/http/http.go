// Package http is the storage backend for http:// and https:// URLs: files
// on a web server, presigned object-store links, a CDN, a model hub's
// resolve URLs. It speaks plain HTTP/1.1 through net/http, no SDK.
//
// # Opening
//
// Open learns the object's size and identity (a strong ETag, else
// Last-Modified) from a HEAD. Where HEAD is refused (a presigned URL is
// signed for GET only, so HEAD gets 403) or does not show byte-range
// support, a ranged GET of byte 0 does the same and also shows whether the
// server honours Range: 206 with Content-Range, or 200 with the whole body.
// Redirects are followed (at most 10) and the final URL is kept: every
// range goes straight to it while it stays valid. When it answers 400, 401,
// 403, 404 or 410 (an expired signature), the original URL is asked again
// and its new redirect target kept.
//
// # Reading
//
// ReadAt is one ranged GET of the caller's span (the engine reads chunks in
// parallel and retries through storage.ReadRange, resuming from the last
// byte received). Every range carries If-Match (strong ETag) or
// If-Unmodified-Since (Last-Modified), and If-Range with the same
// validator, and the answer's Content-Range total and ETag are checked
// against what Open saw: bytes of two versions of a file are never mixed;
// a file replaced while it is read fails with storage.NotFound, "changed
// since it was opened". A server that ignores Range (answers 200 with the
// whole body) is never misread: objects up to MaxWholeObjectBytes are read
// from the start of the body for every chunk, larger ones are refused at
// Open with a clear error, since each chunk would cost the whole file.
//
// Failures are classified as for the other HTTP backends: 5xx, 408, 429
// (with Retry-After), connection resets and stalls are storage.Unavailable
// and retried; 404 and 410 NotFound; 401 and 403 PermissionDenied; other
// 4xx InvalidArgument. The error's cause is a *storage.HTTPError.
//
// # Settings
//
// The backend reads storage.Settings only, never the environment (the
// Python package passes the variables below down as settings):
//
//   - MODEL_STREAMER_HTTP_HEADERS: extra request headers such as
//     Authorization, as "Name: value" lines (newline-separated) or a JSON
//     object {"Name": "value"}. They go to the host of the URL as given
//     only: a redirect to another host (or to http from https) drops them,
//     as it drops Authorization and Cookie.
//   - HF_TOKEN: sent as "Authorization: Bearer <token>" to the Hugging Face
//     Hub's hosts only (huggingface.co, hf.co and their subdomains, and
//     the host of HF_ENDPOINT when set), unless MODEL_STREAMER_HTTP_HEADERS
//     names an Authorization; never after a redirect to another host.
//   - MODEL_STREAMER_HTTP_CA_BUNDLE: a PEM file of the certificate
//     authorities to trust for https, instead of the system's.
//   - SSL_CERT_FILE, SSL_CERT_DIR: as Go reads them on Linux, the roots
//     file and the colon-separated directories of roots that replace the
//     system's default file and directories. Unset: the system roots.
//   - MODEL_STREAMER_STALL_TIMEOUT_MS: a request that receives no byte for
//     this long (default 30 s) is aborted and retried; 0 disables.
//   - RUNAI_STREAMER_S3_TRACE: 1 traces every exchange (package tracelog).
//
// An untrusted certificate is an InvalidArgument error naming the host,
// never a fallback to plain http or to skipping verification.
//
// # Secrets
//
// A URL's query string (a presigned signature) and user information, and
// every request header, never appear in errors, logs or the trace: errors
// name the URL as scheme://host/path.
//
// # Listing
//
// There is no listing over plain HTTP: the backend implements no
// storage.Lister. Callers pass the files' URLs (the CLI takes a text file
// of URLs).
package http

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"math"
	"net"
	nethttp "net/http"
	"net/textproto"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/tracelog"
)

// Setting names read by New.
const (
	SettingHeaders        = "MODEL_STREAMER_HTTP_HEADERS"
	SettingCABundle       = "MODEL_STREAMER_HTTP_CA_BUNDLE"
	SettingSSLCertFile    = "SSL_CERT_FILE"
	SettingSSLCertDir     = "SSL_CERT_DIR"
	SettingHFToken        = "HF_TOKEN"
	SettingHFEndpoint     = "HF_ENDPOINT"
	SettingStallTimeoutMS = "MODEL_STREAMER_STALL_TIMEOUT_MS"
)

// Defaults.
const (
	DefaultStallTimeout = 30 * time.Second
	// ChunkBytes and Concurrency are the Tuned defaults: ranged GETs of
	// 8 MiB, 16 in flight, fill a fast link without asking one web server
	// for more connections than it usually allows a client.
	ChunkBytes  = 8 << 20
	Concurrency = 16
	// maxRedirects bounds a redirect chain, as browsers and net/http do.
	maxRedirects        = 10
	maxIdleConnsPerHost = 256
	// openAttempts bounds the tries of Open's metadata request after
	// transient failures (ReadAt's retries are the engine's).
	openAttempts = 5
)

// MaxWholeObjectBytes is the largest object read from a server that
// ignores Range: each chunk is then read from the start of the body, so the
// cost grows with the square of the size.
var MaxWholeObjectBytes int64 = 64 << 20

// Backend serves http:// and https:// URLs.
type Backend struct {
	client    *nethttp.Client
	headers   nethttp.Header // for the original host only
	hfToken   string
	hubHosts  []string // hosts (and their subdomains) that get HF_TOKEN
	stall     time.Duration
	openRetry storage.RetryPolicy
}

var (
	_ storage.Backend = (*Backend)(nil)
	_ storage.Tuned   = (*Backend)(nil)
)

// New returns a backend configured by settings (see the package
// documentation). It does no network I/O.
func New(s storage.Settings) (storage.Backend, error) {
	b, err := newBackend(s)
	if err != nil {
		return nil, err
	}
	return b, nil
}

func configError(err error) error {
	return &storage.Error{Op: "configure http", Code: storage.InvalidArgument, Err: err}
}

func newBackend(s storage.Settings) (*Backend, error) {
	headers, err := parseHeaders(s.Get(SettingHeaders, ""))
	if err != nil {
		return nil, configError(err)
	}
	stall := DefaultStallTimeout
	if v := strings.TrimSpace(s.Get(SettingStallTimeoutMS, "")); v != "" {
		ms, err := strconv.ParseInt(v, 10, 64)
		if err != nil || ms < 0 {
			return nil, configError(fmt.Errorf("%s=%q: want milliseconds (0: no stall detection)", SettingStallTimeoutMS, v))
		}
		if ms == 0 {
			ms = math.MaxInt64 / int64(time.Millisecond)
		}
		stall = time.Duration(ms) * time.Millisecond
	}
	roots, err := rootCAs(s)
	if err != nil {
		return nil, configError(err)
	}
	trace, err := tracelog.FromSettings(s)
	if err != nil {
		return nil, err
	}
	hub := []string{"huggingface.co", "hf.co"}
	if ep := strings.TrimSpace(s.Get(SettingHFEndpoint, "")); ep != "" {
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, configError(fmt.Errorf("%s=%q: want an http(s) URL such as https://huggingface.co", SettingHFEndpoint, ep))
		}
		hub = append(hub, strings.ToLower(u.Host))
	}
	tr := &nethttp.Transport{
		// No proxy: the backend reads no environment, and a proxy
		// setting would need to come as settings too (not supported yet).
		Proxy: nil,
		DialContext: (&net.Dialer{
			Timeout:   10 * time.Second,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		MaxIdleConns:        4 * maxIdleConnsPerHost,
		MaxIdleConnsPerHost: maxIdleConnsPerHost,
		IdleConnTimeout:     90 * time.Second,
		// Ranges must stay ranges of the stored bytes: no gzip.
		DisableCompression: true,
		// HTTP/1.1 only: one TCP connection per transfer beats large
		// bodies multiplexed over one HTTP/2 connection.
		ForceAttemptHTTP2: false,
		TLSNextProto:      map[string]func(string, *tls.Conn) nethttp.RoundTripper{},
		ReadBufferSize:    256 << 10,
		WriteBufferSize:   16 << 10,
	}
	b := &Backend{
		headers:  headers,
		hfToken:  strings.TrimSpace(s.Get(SettingHFToken, "")),
		hubHosts: hub,
		stall:    stall,
		openRetry: storage.RetryPolicy{MaxRetries: openAttempts - 1, Timeout: time.Minute,
			BaseDelay: 100 * time.Millisecond, MaxDelay: 5 * time.Second},
	}
	b.client = &nethttp.Client{
		Transport:     trace.Transport("http", tr),
		CheckRedirect: b.checkRedirect,
	}
	return b, nil
}

// DefaultChunkBytes is the read size the engine uses for URLs unless the
// caller sets one.
func (b *Backend) DefaultChunkBytes() int64 { return ChunkBytes }

// DefaultConcurrency is the number of ranged GETs the engine keeps in
// flight unless the caller sets one.
func (b *Backend) DefaultConcurrency() int { return Concurrency }

// NoListing says why the backend cannot list, for the caller's message.
func (b *Backend) NoListing() string {
	return "listing is not possible over plain HTTP: name each file's URL (model-streamer stream and pull take a text file of URLs with --url-list)"
}

// parseHeaders reads MODEL_STREAMER_HTTP_HEADERS: "Name: value" lines or a
// JSON object. Messages never quote a value (it is likely a secret).
func parseHeaders(v string) (nethttp.Header, error) {
	h := nethttp.Header{}
	v = strings.TrimSpace(v)
	if v == "" {
		return h, nil
	}
	add := func(name, value string) error {
		name = strings.TrimSpace(name)
		if name == "" || !validHeaderName(name) {
			return fmt.Errorf("%s: %q is not a header name", SettingHeaders, name)
		}
		if strings.ContainsAny(value, "\r\n\x00") {
			return fmt.Errorf("%s: the value of %s holds a line break or NUL", SettingHeaders, name)
		}
		switch textproto.CanonicalMIMEHeaderKey(name) {
		case "Range", "If-Match", "If-Range", "If-Unmodified-Since", "Host", "Content-Length", "Accept-Encoding":
			return fmt.Errorf("%s: %s is set by the streamer itself", SettingHeaders, name)
		}
		h.Add(name, strings.TrimSpace(value))
		return nil
	}
	if strings.HasPrefix(v, "{") {
		var m map[string]string
		if err := json.Unmarshal([]byte(v), &m); err != nil {
			return nil, fmt.Errorf("%s: not a JSON object of strings (%v)", SettingHeaders, err)
		}
		names := make([]string, 0, len(m))
		for k := range m {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if err := add(k, m[k]); err != nil {
				return nil, err
			}
		}
		return h, nil
	}
	for i, line := range strings.Split(v, "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("%s: line %d is not \"Name: value\"", SettingHeaders, i+1)
		}
		if err := add(name, value); err != nil {
			return nil, err
		}
	}
	return h, nil
}

func validHeaderName(s string) bool {
	for _, r := range s {
		if r <= ' ' || r >= 0x7f || strings.ContainsRune("()<>@,;:\\\"/[]?={}", r) {
			return false
		}
	}
	return true
}

// credentialHeaders are dropped from a request redirected to another host.
func (b *Backend) credentialHeaders() []string {
	names := []string{"Authorization", "Cookie", "Proxy-Authorization"}
	for k := range b.headers {
		names = append(names, k)
	}
	return names
}

// checkRedirect follows at most maxRedirects redirects, refuses one from
// https to http, and strips the credentials from a request that leaves the
// original host (net/http strips only Authorization, Cookie and
// WWW-Authenticate, and only across domains).
func (b *Backend) checkRedirect(req *nethttp.Request, via []*nethttp.Request) error {
	if len(via) >= maxRedirects {
		return &redirectError{fmt.Sprintf("stopped after %d redirects", maxRedirects)}
	}
	first := via[0].URL
	if first.Scheme == "https" && req.URL.Scheme != "https" {
		return &redirectError{fmt.Sprintf("refusing a redirect from https to %s (%s)", req.URL.Scheme, Redact(req.URL))}
	}
	if !sameHost(req.URL, first) {
		for _, k := range b.credentialHeaders() {
			req.Header.Del(k)
		}
	}
	return nil
}

func sameHost(a, b *url.URL) bool {
	return a.Scheme == b.Scheme && strings.EqualFold(a.Host, b.Host)
}

// isHub reports whether host (no port) is one of the Hub's.
func (b *Backend) isHub(u *url.URL) bool {
	host := strings.ToLower(u.Hostname())
	for _, h := range b.hubHosts {
		if strings.Contains(h, ":") { // HF_ENDPOINT with a port: exact host:port
			if strings.EqualFold(u.Host, h) {
				return true
			}
			continue
		}
		if host == h || strings.HasSuffix(host, "."+h) {
			return true
		}
	}
	return false
}

// addCredentials sets the configured headers (and the Hub token on a Hub
// host) on a request to the URL as given, never on another host's.
func (b *Backend) addCredentials(req *nethttp.Request) {
	for k, vs := range b.headers {
		req.Header[k] = append([]string(nil), vs...)
	}
	if b.hfToken != "" && req.Header.Get("Authorization") == "" && b.isHub(req.URL) {
		req.Header.Set("Authorization", "Bearer "+b.hfToken)
	}
}

// Redact returns u as scheme://host/path: no user information, query or
// fragment, which may carry secrets (a presigned signature).
func Redact(u *url.URL) string {
	if u == nil {
		return ""
	}
	return u.Scheme + "://" + u.Host + u.EscapedPath()
}

// RedactString is Redact for a URL string; an unparsable one is cut at the
// first "?" or "#".
func RedactString(s string) string {
	if u, err := url.Parse(s); err == nil && u.Scheme != "" {
		return Redact(u)
	}
	if i := strings.IndexAny(s, "?#"); i >= 0 {
		return s[:i]
	}
	return s
}

// urlQuery matches the query string and fragment of an http(s) URL inside a
// text, up to a ": " separator, a quote or the end of a word.
var urlQuery = regexp.MustCompile(`(https?://[^\s?#"'@/]*(?:@[^\s?#"'/]*)?[^\s?#"']*)[?#][^\s"']*?(:?(?:\s|$|["']))`)

// urlUserinfo matches the user information of an http(s) URL in a text.
var urlUserinfo = regexp.MustCompile(`(https?://)[^\s/?#"'@]*@`)

// RedactText removes the query strings, fragments and user information of
// the http(s) URLs in s: messages that name a URL as the caller gave it
// (the engine's "URL: invalid safetensors file: ...") then carry no
// signature. Other text is unchanged.
func RedactText(s string) string {
	if !strings.Contains(s, "http") {
		return s
	}
	s = urlQuery.ReplaceAllString(s, "$1$2")
	return urlUserinfo.ReplaceAllString(s, "$1")
}

// parseURL checks an http(s) URL.
func parseURL(uri string) (*url.URL, error) {
	u, err := url.Parse(uri)
	if err != nil {
		return nil, fmt.Errorf("not a URL")
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return nil, fmt.Errorf("scheme %q: want http or https", u.Scheme)
	case u.Host == "":
		return nil, fmt.Errorf("no host")
	case u.Path == "" || strings.HasSuffix(u.Path, "/"):
		return nil, fmt.Errorf("names a directory, not a file (listing is not possible over HTTP)")
	}
	u.Fragment, u.RawFragment = "", ""
	return u, nil
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
