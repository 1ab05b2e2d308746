package storage

import "context"

// A read's destination normally belongs to the caller again once ReadAt
// returns. An object that goes on using it afterwards (the local cache,
// writing what it read through to disk) lets its reader move on to the next
// range instead of waiting for the disk, but only where the caller allows
// it: the caller must then neither hand the bytes out nor reuse the memory
// until the object says it is done. The permission travels in the context,
// through whatever wraps the object (retries, stall watchdogs, traces).

type retainKey struct{}

// WithRetain returns ctx allowing an Object's ReadAt to keep using the
// destination of a read after it returns: the object calls hold before
// ReadAt returns, and the function hold returned once it is done with the
// bytes (from any goroutine; calls after the first do nothing). Objects
// that do not need it ignore it.
func WithRetain(ctx context.Context, hold func() (done func())) context.Context {
	return context.WithValue(ctx, retainKey{}, hold)
}

// Retain returns the hold function of ctx (see WithRetain), or nil where
// the caller needs the destination to itself when ReadAt returns.
func Retain(ctx context.Context) func() (done func()) {
	h, _ := ctx.Value(retainKey{}).(func() func())
	return h
}
