package main

import (
	"errors"
	"testing"

	"github.com/model-streamer/model-streamer/go/storage"
)

func TestSharedBackends(t *testing.T) {
	builds := 0
	ok := func(storage.Settings) (storage.Backend, error) { builds++; return nil, nil }
	a := sharedBackend("zz", storage.Settings{"K": "1"}, ok)
	b := sharedBackend("zz", storage.Settings{"K": "1"}, ok)
	c := sharedBackend("zz", storage.Settings{"K": "2"}, ok)
	if a != b || a == c {
		t.Fatalf("same settings share one backend, other settings get another: a==b %v, a==c %v", a == b, a == c)
	}
	a.get()
	b.get()
	if builds != 1 {
		t.Fatalf("%d builds for one shared backend", builds)
	}

	fail := func(storage.Settings) (storage.Backend, error) { return nil, errors.New("no credentials yet") }
	f := sharedBackend("zz", storage.Settings{"K": "3"}, fail)
	if _, err := f.get(); err == nil {
		t.Fatal("the failing build did not fail")
	}
	if g := sharedBackend("zz", storage.Settings{"K": "3"}, ok); g == f {
		t.Fatal("a backend whose build failed was kept: the next request must build again")
	}

	for i := range maxBackends + 4 {
		sharedBackend("zz", storage.Settings{"N": string(rune('a' + i))}, ok)
	}
	backends.mu.Lock()
	n := len(backends.byKey)
	backends.mu.Unlock()
	if n > maxBackends {
		t.Fatalf("%d backends kept, more than %d", n, maxBackends)
	}
}
