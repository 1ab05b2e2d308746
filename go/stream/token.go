package stream

import (
	"sync"
	"sync/atomic"
)

// Token is a delivered tensor's claim on its memory. Tokens are unique in
// the process, so a release needs no stream: it may come after Close, from
// any thread (a garbage collector's finalizer, say).
type Token uint64

type claim struct {
	s *Stream
	r *region
}

var (
	claims    sync.Map // Token -> claim
	lastToken atomic.Uint64
)

func newToken(s *Stream, r *region) Token {
	t := Token(lastToken.Add(1))
	claims.Store(t, claim{s, r})
	return t
}

// Release gives a tensor's memory back. Releasing a token twice, or the
// zero token, does nothing.
func Release(t Token) {
	if t == 0 {
		return
	}
	if c, ok := claims.LoadAndDelete(t); ok {
		c := c.(claim)
		c.s.release(c.r)
	}
}

// Release is a shorthand for Release(r.Token).
func (r Ready) Release() { Release(r.Token) }
