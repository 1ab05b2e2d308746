package gcs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
)

// send makes exactly one request, with credentials, under a stall
// watchdog. On success the caller reads resp.Body through watchedBody and
// calls w.done; on failure the error is the cause (*storage.StallError when the
// watchdog cut it) for classify.
func (b *backend) send(ctx context.Context, method, u string, h http.Header, body io.Reader) (*http.Response, *storage.StallWatch, error) {
	return b.sendAs(ctx, b.auth, method, u, h, body)
}

// sendAs is send with the credentials a (nil: none).
func (b *backend) sendAs(ctx context.Context, a *authorizer, method, u string, h http.Header, body io.Reader) (*http.Response, *storage.StallWatch, error) {
	w := storage.NewStallWatch(ctx, b.stall)
	req, err := http.NewRequestWithContext(w.Context(), method, u, body)
	if err != nil {
		w.Done()
		return nil, nil, err
	}
	for k, v := range h {
		req.Header[k] = v
	}
	if err := a.authorize(req); err != nil {
		stall := w.Fired()
		w.Done()
		if stall != nil {
			return nil, nil, stall
		}
		return nil, nil, err
	}
	resp, err := b.hc.Do(req)
	if err != nil {
		stall := w.Fired()
		w.Done()
		if stall != nil {
			return nil, nil, stall
		}
		return nil, nil, err
	}
	w.Kick()
	return resp, w, nil
}

// getJSON decodes the JSON answer to a GET of u (a metadata request: an
// object's attributes, a page of a listing) into v, retrying 408, 429, 5xx
// and connection failures up to MetadataAttempts attempts with 100 ms - 2 s
// of jittered exponential backoff. Retry-After is reported in the error,
// not waited for: the caller's own retry (if any) honours it.
func (b *backend) getJSON(ctx context.Context, op, uri, u string, v any) error {
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		err := b.getJSONOnce(ctx, op, uri, u, v)
		if err == nil || attempt >= MetadataAttempts || storage.CodeOf(err) != storage.Unavailable || ctx.Err() != nil {
			return err
		}
		// Full jitter, as gax's backoff: a pause in [1ns, delay].
		pause := time.Duration(1 + rand.Int64N(int64(delay)))
		delay = min(2*delay, 2*time.Second)
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return classify(ctx, op, uri, 0, 0, err)
		case <-t.C:
		}
	}
}

func (b *backend) getJSONOnce(ctx context.Context, op, uri, u string, v any) error {
	resp, w, err := b.send(ctx, http.MethodGet, u, nil, nil)
	if err != nil {
		return classify(ctx, op, uri, 0, 0, err)
	}
	defer w.Done()
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return statusError(ctx, op, uri, 0, 0, resp, w)
	}
	if err := json.NewDecoder(w.Reader(resp.Body)).Decode(v); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		if stall := w.Fired(); stall != nil {
			err = stall
		} else if errors.As(err, &syn) || errors.As(err, &typ) {
			return &storage.Error{Op: op, URI: uri, Code: storage.Internal, Err: fmt.Errorf("malformed JSON answer: %w", err)}
		}
		return classify(ctx, op, uri, 0, 0, err)
	}
	// Read to the end so the connection goes back to the pool.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	return nil
}
