package stream

import "sync"

// readyQueue holds tensors whose bytes are in, until Next takes them.
// notify (capacity 1) wakes a waiting Next after any change worth a look.
type readyQueue struct {
	mu     sync.Mutex
	items  []Ready
	ntaken int
	notify chan struct{}
}

func (q *readyQueue) init() { q.notify = make(chan struct{}, 1) }

func (q *readyQueue) poke() {
	select {
	case q.notify <- struct{}{}:
	default:
	}
}

func (q *readyQueue) push(batch []Ready) {
	q.mu.Lock()
	q.items = append(q.items, batch...)
	q.mu.Unlock()
	q.poke()
}

// take removes up to max items (max <= 0: all).
func (q *readyQueue) take(max int) []Ready {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := len(q.items)
	if n == 0 {
		return nil
	}
	if max > 0 && n > max {
		n = max
	}
	out := make([]Ready, n)
	copy(out, q.items)
	q.items = q.items[n:]
	if len(q.items) == 0 {
		q.items = nil
	}
	q.ntaken += n
	return out
}

func (q *readyQueue) taken() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.ntaken
}

func (q *readyQueue) drain() []Ready {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.items
	q.items = nil
	return out
}

func (q *readyQueue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}
