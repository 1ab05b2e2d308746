package stream_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/fs"
	"github.com/model-streamer/model-streamer/go/stream"
)

// holdingOpener's objects do what the local cache does with the stream's
// permission (storage.WithRetain): they hold on to every read's memory
// after ReadAt returns, here until release is closed.
type holdingOpener struct {
	inner       stream.Opener
	release     chan struct{}
	held, letGo atomic.Int64
}

func (o *holdingOpener) Open(ctx context.Context, uri string) (storage.Object, error) {
	obj, err := o.inner.Open(ctx, uri)
	if err != nil {
		return nil, err
	}
	return &holdingObject{Object: obj, o: o}, nil
}

type holdingObject struct {
	storage.Object
	o *holdingOpener
}

func (h *holdingObject) ReadAt(ctx context.Context, dst []byte, off int64) (int, error) {
	n, err := h.Object.ReadAt(ctx, dst, off)
	if hold := storage.Retain(ctx); hold != nil && n > 0 {
		done := hold()
		h.o.held.Add(1)
		go func() {
			<-h.o.release
			h.o.letGo.Add(1)
			done()
			done() // a second call does nothing
		}()
	}
	return n, err
}

// A range an object still holds is not handed out; once let go, every
// tensor arrives with its bytes.
func TestHeldReadsAreDeliveredOnceLetGo(t *testing.T) {
	cp := writeCheckpoint(t, 21, 2, 6, 1<<15)
	o := &holdingOpener{inner: registry(fs.Buffered), release: make(chan struct{})}
	s, err := stream.Open(context.Background(), stream.DefaultConfig(o), cp.paths, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	files := s.Files()
	early := 0
	deadline := time.Now().Add(300 * time.Millisecond)
	for time.Now().Before(deadline) {
		batch, err := s.Next(context.Background(), 0, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range batch {
			if len(r.Data) != 0 {
				t.Fatalf("tensor %s handed out while its read was held", files[r.File].Tensors[r.Tensor].Name)
			}
			early++ // empty tensors need no read
			r.Release()
		}
	}
	if o.held.Load() == 0 {
		t.Fatal("no read was held: the stream gave no permission to hold")
	}
	close(o.release)
	seen := drain(t, s, cp.want, false)
	if got := len(seen) + early; got != len(cp.want) {
		t.Fatalf("%d tensors delivered, want %d", got, len(cp.want))
	}
}

// Close waits for the holds: the memory they read must not go while they
// use it.
func TestCloseWaitsForHeldReads(t *testing.T) {
	cp := writeCheckpoint(t, 22, 1, 4, 1<<15)
	o := &holdingOpener{inner: registry(fs.Buffered), release: make(chan struct{})}
	s, err := stream.Open(context.Background(), stream.DefaultConfig(o), cp.paths, nil)
	if err != nil {
		t.Fatal(err)
	}
	for o.held.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	const wait = 200 * time.Millisecond
	time.AfterFunc(wait, func() { close(o.release) })
	start := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < wait/2 {
		t.Fatalf("Close returned after %v, before the held reads were let go", d)
	}
	if held, letGo := o.held.Load(), o.letGo.Load(); letGo != held {
		t.Fatalf("Close returned with %d of %d held reads not let go", held-letGo, held)
	}
}
