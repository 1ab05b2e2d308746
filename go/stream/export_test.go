package stream

// SetUnlimitedRing shrinks the ring of unlimited streams for a test.
func SetUnlimitedRing(n int64) (restore func()) {
	old := unlimitedRing
	unlimitedRing = n
	return func() { unlimitedRing = old }
}
