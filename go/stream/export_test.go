package stream

// SetUnlimitedRing shrinks the ring of unlimited streams for a test.
func SetUnlimitedRing(n int64) (restore func()) {
	old := unlimitedRing
	unlimitedRing = n
	return func() { unlimitedRing = old }
}

// SetFreePageReporting makes the arena's huge-page choice see a host that
// does (or does not) take free memory back, for a test.
func SetFreePageReporting(on bool) (restore func()) {
	old := freePageReporting
	freePageReporting = func() bool { return on }
	return func() { freePageReporting = old }
}
