// Package faultproxy is an HTTP reverse proxy on 127.0.0.1 that injects
// faults a test controls while it runs: error statuses (with Retry-After),
// connection resets and stalls part way through a response body, and added
// latency. Put it between a storage client and a real test server
// (internal/testserver) to exercise retries, timeouts and error mapping.
//
// It can also corrupt a response body: Flip inverts one bit of one byte, at
// an offset of the object (found from the response's Content-Range) or of
// the body, so a test can show what a client makes of silently wrong bytes.
//
// Everything the fault does not touch is forwarded as is: method, path and
// query, all headers including the Host the client sent (so signatures such
// as AWS SigV4 or Azure Shared Key, computed for the proxy's address, stay
// valid: the servers check them against the Host header they receive), and
// request and response bodies, streamed. The proxy adds no headers and asks
// for no compression.
package faultproxy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Always, as a Count field of a Fault, applies the fault to every matching
// request until the next Set.
const Always = -1

// MaxStall bounds every stall: a StallFor above it, or a StallFor of zero,
// stalls for MaxStall. A stall also ends when the client goes away or the
// proxy closes.
const MaxStall = 30 * time.Second

// Fault describes the faults to inject. The zero Fault injects nothing.
//
// Each kind (status, reset, stall) applies to the next Count matching
// requests, or to every one with Count Always (any negative value). A Count
// of 0 means Always when the kind is otherwise set (Status != 0,
// ResetAfterBytes > 0, StallFor > 0 or StallAfterBytes > 0) and off when it
// is not. One request gets at most one kind: status first, then reset, then
// stall. A reset or stall only applies to (and only uses up its count on) a
// response whose body is longer than the given offset, so the client always
// sees the fault it asked for.
type Fault struct {
	// Status answers matching requests with this HTTP status instead of
	// forwarding them. The body is a plausible error for the API the
	// request used: Azure XML (ServerBusy for 503) when it carries
	// x-ms-version, GCS JSON for /storage/v1, /upload and /download
	// paths, S3 XML (SlowDown for 503 and 429) otherwise.
	Status      int
	StatusCount int
	// RetryAfter sets a Retry-After header (whole seconds, rounded up)
	// on injected status answers.
	RetryAfter time.Duration

	// ResetAfterBytes cuts the connection with a TCP RST after this many
	// response-body bytes, for the next ResetCount matching responses.
	ResetAfterBytes int64
	ResetCount      int

	// StallAfterBytes stops sending after this many response-body bytes
	// and holds the connection open for StallFor (at most MaxStall), then
	// sends the rest, for the next StallCount matching responses.
	StallAfterBytes int64
	StallFor        time.Duration
	StallCount      int

	// Latency is added before the response to every matching request.
	Latency time.Duration

	// Flip, when set, corrupts one bit of matching response bodies.
	Flip *Flip

	// Match selects the requests the faults apply to. Nil matches data
	// reads: GET requests with a Range or x-ms-range header.
	Match func(*http.Request) bool
}

// Flip inverts one bit of a response body, leaving everything else (the
// length, the headers) as the server sent it.
type Flip struct {
	// Offset is the offset of the byte to corrupt in the object: a
	// response carries it when its Content-Range ("bytes A-B/N") covers it,
	// and a response without Content-Range counts as starting at byte 0.
	// With Body set, Offset counts from the start of the body instead.
	Offset int64
	Body   bool
	// Bit is the bit (0-7) of that byte to invert.
	Bit uint
	// Count is how many responses to corrupt (0 or Always: every one that
	// carries the byte); only those that carry it use up the count.
	Count int
}

// IsRangedGet is the default Match: a GET with a Range or x-ms-range header.
func IsRangedGet(r *http.Request) bool {
	return r.Method == http.MethodGet && (r.Header.Get("Range") != "" || r.Header.Get("X-Ms-Range") != "")
}

// Proxy is a running fault-injecting reverse proxy.
type Proxy struct {
	target *url.URL
	ln     net.Listener
	srv    *http.Server
	tr     *http.Transport
	closed chan struct{}
	once   sync.Once

	mu       sync.Mutex
	fault    Fault
	left     [4]int // remaining status, reset, stall, flip injections; <0 unlimited
	requests int
	injected int

	// bodyBytes counts the response-body bytes sent to clients (BodyBytes).
	bodyBytes atomic.Int64
}

const (
	kindStatus = iota
	kindReset
	kindStall
	kindFlip
)

// Start starts a proxy on 127.0.0.1 in front of target ("http://127.0.0.1:PORT")
// and closes it when t ends.
func Start(t testing.TB, target string) *Proxy {
	t.Helper()
	p, err := New(target)
	if err != nil {
		t.Fatalf("faultproxy: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

// New starts a proxy on 127.0.0.1 in front of target; the caller closes it.
func New(target string) (*Proxy, error) {
	u, err := url.Parse(target)
	if err != nil {
		return nil, err
	}
	if u.Scheme != "http" || u.Host == "" {
		return nil, fmt.Errorf("target %q: want http://HOST:PORT", target)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		target: u,
		ln:     ln,
		closed: make(chan struct{}),
		tr: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			DisableCompression:    true, // pass Accept-Encoding and bodies through untouched
			MaxIdleConns:          256,
			MaxIdleConnsPerHost:   256,
			IdleConnTimeout:       30 * time.Second,
			ExpectContinueTimeout: time.Second,
		},
	}
	p.srv = &http.Server{
		Handler:           http.HandlerFunc(p.serve),
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          nil,
	}
	go p.srv.Serve(ln)
	return p, nil
}

// URL returns the proxy's base URL, "http://127.0.0.1:PORT".
func (p *Proxy) URL() string { return "http://" + p.ln.Addr().String() }

// Addr returns the proxy's address, "127.0.0.1:PORT".
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Set replaces the active faults and their counts. Responses already being
// faulted carry on with the fault they got.
func (p *Proxy) Set(f Fault) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fault = f
	p.left[kindStatus] = count(f.StatusCount, f.Status != 0)
	p.left[kindReset] = count(f.ResetCount, f.ResetAfterBytes > 0)
	p.left[kindStall] = count(f.StallCount, f.StallFor > 0 || f.StallAfterBytes > 0)
	p.left[kindFlip] = 0
	if f.Flip != nil {
		p.left[kindFlip] = count(f.Flip.Count, true)
	}
}

func count(n int, set bool) int {
	switch {
	case n < 0, n == 0 && set:
		return Always
	}
	return n
}

// Clear removes all faults; Set(Fault{}).
func (p *Proxy) Clear() { p.Set(Fault{}) }

// Stats returns how many requests the proxy has received and how many
// faults (statuses, resets, stalls; not latency) it has injected.
func (p *Proxy) Stats() (requests, faultsInjected int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.requests, p.injected
}

// BodyBytes returns how many response-body bytes the proxy has passed to
// its clients: what crossed the "wire" (headers and requests not counted).
func (p *Proxy) BodyBytes() int64 { return p.bodyBytes.Load() }

// Close stops the proxy: it ends stalls, lets responses in flight finish
// for up to CloseGrace, then closes every connection. Later calls do nothing.
func (p *Proxy) Close() {
	p.once.Do(func() {
		close(p.closed)
		ctx, cancel := context.WithTimeout(context.Background(), CloseGrace)
		defer cancel()
		p.srv.Shutdown(ctx)
		p.srv.Close()
		p.tr.CloseIdleConnections()
	})
}

// CloseGrace bounds how long Close waits for responses in flight.
const CloseGrace = 2 * time.Second

// plan is what happens to one request.
type plan struct {
	latency    time.Duration
	status     int
	retryAfter time.Duration
	// resetAt / stallAt are body offsets, -1 when not armed; armed
	// means the slot is taken only if the body turns out long enough.
	resetAt, stallAt int64
	stallFor         time.Duration
	// flip is the armed bit flip (nil: none); flipAt its body offset once
	// the response is known to carry it, else -1.
	flip   *Flip
	flipAt int64
}

// decide picks the faults for r and takes a status slot if one applies.
func (p *Proxy) decide(r *http.Request) plan {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests++
	pl := plan{resetAt: -1, stallAt: -1, flipAt: -1}
	f := p.fault
	match := f.Match
	if match == nil {
		match = IsRangedGet
	}
	if !match(r) {
		return pl
	}
	pl.latency = f.Latency
	if f.Flip != nil && p.left[kindFlip] != 0 {
		flip := *f.Flip
		pl.flip = &flip
	}
	if f.Status != 0 && p.take(kindStatus) {
		pl.status, pl.retryAfter = f.Status, f.RetryAfter
		p.injected++
		return pl
	}
	if p.left[kindReset] != 0 {
		pl.resetAt = max(f.ResetAfterBytes, 0)
	}
	if p.left[kindStall] != 0 {
		pl.stallAt = max(f.StallAfterBytes, 0)
		pl.stallFor = f.StallFor
		if pl.stallFor <= 0 || pl.stallFor > MaxStall {
			pl.stallFor = MaxStall
		}
	}
	return pl
}

// take uses up one injection of kind; the caller holds p.mu.
func (p *Proxy) take(kind int) bool {
	switch n := p.left[kind]; {
	case n < 0:
		return true
	case n > 0:
		p.left[kind]--
		return true
	}
	return false
}

// arm decides, once the response's body length is known (-1: unknown),
// whether an armed reset or stall fires for it, and takes its slot.
func (p *Proxy) arm(pl *plan, bodyLen int64) {
	if pl.resetAt < 0 && pl.stallAt < 0 {
		return
	}
	long := func(at int64) bool { return at >= 0 && (bodyLen < 0 || bodyLen > at) }
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case long(pl.resetAt) && p.take(kindReset):
		pl.stallAt = -1
		p.injected++
	case long(pl.stallAt) && p.take(kindStall):
		pl.resetAt = -1
		p.injected++
	default:
		pl.resetAt, pl.stallAt = -1, -1
	}
}

// armFlip decides whether the armed flip applies to a response with this
// Content-Range and body length (-1: unknown), and takes its slot.
func (p *Proxy) armFlip(pl *plan, contentRange string, bodyLen int64) {
	if pl.flip == nil || bodyLen == 0 {
		return
	}
	at := pl.flip.Offset
	if !pl.flip.Body {
		if start, ok := rangeStart(contentRange); ok {
			at -= start
		}
	}
	if at < 0 || (bodyLen >= 0 && at >= bodyLen) {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.take(kindFlip) {
		pl.flipAt = at
		p.injected++
	}
}

// rangeStart parses the first byte of "bytes A-B/N".
func rangeStart(v string) (int64, bool) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(v), "bytes ")
	if !ok {
		return 0, false
	}
	a, _, ok := strings.Cut(rest, "-")
	start, err := strconv.ParseInt(strings.TrimSpace(a), 10, 64)
	return start, ok && err == nil
}

// Hop-by-hop headers, which a proxy must not forward.
var hopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
	"Proxy-Authorization", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func removeHop(h http.Header) {
	for _, f := range h.Values("Connection") {
		for _, name := range strings.Split(f, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, k := range hopHeaders {
		h.Del(k)
	}
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request) {
	pl := p.decide(r)
	if pl.latency > 0 && !p.sleep(r.Context(), pl.latency) {
		return
	}
	if pl.status != 0 {
		writeError(w, r, pl.status, pl.retryAfter)
		return
	}

	out := r.Clone(r.Context())
	out.RequestURI = ""
	out.URL.Scheme = p.target.Scheme
	out.URL.Host = p.target.Host
	out.Host = r.Host // the client's Host: what it signed
	removeHop(out.Header)
	if r.ContentLength == 0 {
		out.Body = http.NoBody
	}
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header.Set("User-Agent", "") // do not add Go's
	}
	resp, err := p.tr.RoundTrip(out)
	if err != nil {
		if r.Context().Err() == nil {
			http.Error(w, "faultproxy: upstream: "+err.Error(), http.StatusBadGateway)
		}
		return
	}
	defer resp.Body.Close()

	bodyLen := resp.ContentLength
	if r.Method == http.MethodHead || resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified {
		bodyLen = 0
	}
	p.arm(&pl, bodyLen)
	p.armFlip(&pl, resp.Header.Get("Content-Range"), bodyLen)

	removeHop(resp.Header)
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	// Add nothing the server did not send: net/http would sniff a
	// Content-Type and add a Date.
	for _, k := range []string{"Content-Type", "Date"} {
		if _, ok := resp.Header[k]; !ok {
			w.Header()[k] = nil
		}
	}
	if resp.ContentLength >= 0 && bodyLen != 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	w.WriteHeader(resp.StatusCode)
	p.copyBody(w, r, resp.Body, pl)
}

// copyBody streams body to w, stalling or resetting as pl says.
func (p *Proxy) copyBody(w http.ResponseWriter, r *http.Request, body io.Reader, pl plan) {
	rc := http.NewResponseController(w)
	buf := make([]byte, 64<<10)
	var sent int64
	for {
		chunk := buf
		// Stop exactly at the fault offset.
		for _, at := range []int64{pl.resetAt, pl.stallAt} {
			if at >= sent && at-sent < int64(len(chunk)) {
				chunk = chunk[:at-sent]
			}
		}
		if pl.resetAt >= 0 && sent == pl.resetAt {
			p.reset(w, rc)
			return
		}
		if pl.stallAt >= 0 && sent == pl.stallAt {
			rc.Flush()
			pl.stallAt = -1
			if !p.sleep(r.Context(), pl.stallFor) {
				return
			}
			continue
		}
		n, err := body.Read(chunk)
		if at := pl.flipAt; at >= sent && at < sent+int64(n) {
			chunk[at-sent] ^= 1 << (pl.flip.Bit & 7)
		}
		if n > 0 {
			if _, werr := w.Write(chunk[:n]); werr != nil {
				return
			}
			sent += int64(n)
			p.bodyBytes.Add(int64(n))
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				// The upstream broke off: break off too, so the
				// client does not take a short body for a whole one.
				panic(http.ErrAbortHandler)
			}
			return
		}
	}
}

// reset flushes what was written and closes the connection with an RST.
func (p *Proxy) reset(w http.ResponseWriter, rc *http.ResponseController) {
	rc.Flush()
	conn, _, err := rc.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // cannot hijack (HTTP/2): plain abort
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

// sleep waits d, or until ctx is done or the proxy closes; it reports
// whether the full wait passed.
func (p *Proxy) sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
	case <-p.closed:
	}
	return false
}

// writeError answers r with an injected status and an error body in the
// dialect of the API r used.
func writeError(w http.ResponseWriter, r *http.Request, status int, retryAfter time.Duration) {
	h := w.Header()
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int(math.Ceil(retryAfter.Seconds()))))
	}
	var body []byte
	switch {
	case r.Header.Get("X-Ms-Version") != "" || strings.Contains(r.Header.Get("Authorization"), "SharedKey"):
		code := azureCode(status)
		h.Set("Content-Type", "application/xml")
		h.Set("X-Ms-Error-Code", code)
		body = fmt.Appendf(nil, `<?xml version="1.0" encoding="utf-8"?><Error><Code>%s</Code><Message>faultproxy: injected %d</Message></Error>`, code, status)
	case isGCSPath(r.URL.Path):
		h.Set("Content-Type", "application/json; charset=UTF-8")
		msg := fmt.Sprintf("faultproxy: injected %d", status)
		body, _ = json.Marshal(map[string]any{"error": map[string]any{
			"code": status, "message": msg,
			"errors": []map[string]string{{"reason": gcsReason(status), "message": msg}},
		}})
	default:
		h.Set("Content-Type", "application/xml")
		body = fmt.Appendf(nil, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
			`<Error><Code>%s</Code><Message>%s</Message><Resource>%s</Resource><RequestId>faultproxy</RequestId></Error>`,
			s3Code(status), s3Message(status), xmlEscape(r.URL.Path))
	}
	if r.Method == http.MethodHead {
		body = nil
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}

func isGCSPath(p string) bool {
	return strings.HasPrefix(p, "/storage/v1/") || strings.HasPrefix(p, "/upload/storage/") ||
		strings.HasPrefix(p, "/download/storage/") || strings.HasPrefix(p, "/batch/storage/")
}

func s3Code(status int) string {
	switch status {
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		return "SlowDown"
	case http.StatusInternalServerError:
		return "InternalError"
	case http.StatusForbidden:
		return "AccessDenied"
	case http.StatusNotFound:
		return "NoSuchKey"
	case http.StatusBadRequest:
		return "InvalidRequest"
	}
	return strings.ReplaceAll(http.StatusText(status), " ", "")
}

func s3Message(status int) string {
	switch status {
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		return "Please reduce your request rate."
	case http.StatusInternalServerError:
		return "We encountered an internal error. Please try again."
	}
	return http.StatusText(status)
}

func azureCode(status int) string {
	switch status {
	case http.StatusServiceUnavailable, http.StatusTooManyRequests:
		return "ServerBusy"
	case http.StatusInternalServerError:
		return "InternalError"
	case http.StatusForbidden:
		return "AuthorizationFailure"
	case http.StatusNotFound:
		return "BlobNotFound"
	}
	return strings.ReplaceAll(http.StatusText(status), " ", "")
}

func gcsReason(status int) string {
	switch status {
	case http.StatusTooManyRequests:
		return "rateLimitExceeded"
	case http.StatusServiceUnavailable:
		return "backendError"
	case http.StatusInternalServerError:
		return "internalError"
	case http.StatusForbidden:
		return "forbidden"
	case http.StatusNotFound:
		return "notFound"
	}
	return "error"
}

func xmlEscape(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&apos;").Replace(s)
}
