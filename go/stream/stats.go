package stream

import (
	"sync/atomic"
	"time"
)

type counters struct {
	start           time.Time
	bytesRequested  atomic.Uint64
	bytesRead       atomic.Uint64
	headerBytesRead atomic.Uint64
	reads           atomic.Uint64
	retries         atomic.Uint64
	firstTensor     atomic.Int64 // ns since start; -1 before the first
	lastReady       atomic.Int64
	memoryWait      atomic.Int64
	consumerWait    atomic.Int64
}

// Stats is a snapshot of a stream's counters.
type Stats struct {
	BytesRequested   uint64        // tensor bytes requested
	BytesRead        uint64        // tensor bytes read or mapped from storage (alignment included)
	HeaderBytesRead  uint64        // bytes read to learn the headers (a speculative first read each; exactly the headers for ReadHeaders)
	Reads            uint64        // read calls to storage
	Retries          uint64        // transient failures retried
	TensorsDelivered uint64        // tensors made ready
	ArenaBytes       uint64        // peak CPU memory the stream allocated
	FreshBlocks      uint64        // blocks mapped outside the ring (kept tensors, see arena)
	FreshBytes       uint64        // their bytes: fresh pages the kernel zeroes on first touch
	FirstTensor      time.Duration // open to first tensor ready; -1 before
	Elapsed          time.Duration // open to last tensor ready, or to now while streaming
	MemoryWait       time.Duration // readers waiting for buffer space (consumer-bound)
	ConsumerWait     time.Duration // Next waiting for data (storage-bound)
}

// Throughput is requested bytes per second of Elapsed.
func (st Stats) Throughput() float64 {
	if st.Elapsed <= 0 {
		return 0
	}
	return float64(st.BytesRequested) / st.Elapsed.Seconds()
}

// Stats returns the stream's counters now.
func (s *Stream) Stats() Stats {
	elapsed := time.Duration(s.st.lastReady.Load())
	if int(s.delivered.Load()) < s.total {
		elapsed = time.Since(s.st.start)
	}
	var arena, blocks, fresh int64
	if s.arena != nil {
		arena, blocks, fresh = s.arena.peakBytes()
	}
	return Stats{
		BytesRequested:   s.st.bytesRequested.Load(),
		BytesRead:        s.st.bytesRead.Load(),
		HeaderBytesRead:  s.st.headerBytesRead.Load(),
		Reads:            s.st.reads.Load(),
		Retries:          s.st.retries.Load(),
		TensorsDelivered: uint64(s.delivered.Load()),
		ArenaBytes:       uint64(arena),
		FreshBlocks:      uint64(blocks),
		FreshBytes:       uint64(fresh),
		FirstTensor:      time.Duration(s.st.firstTensor.Load()),
		Elapsed:          elapsed,
		MemoryWait:       time.Duration(s.st.memoryWait.Load()),
		ConsumerWait:     time.Duration(s.st.consumerWait.Load()),
	}
}
