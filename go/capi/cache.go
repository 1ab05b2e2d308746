package main

import (
	"github.com/model-streamer/model-streamer/go/cache"
	"github.com/model-streamer/model-streamer/go/stream"
)

// opener is what a stream reads through: the registry, behind the local
// cache when MODEL_STREAMER_CACHE_DIR is set (read-only for header reads,
// which read too little of an object to write an entry).
func (r request) opener(readOnly bool) (stream.Opener, error) {
	o, err := cache.FromSettings(r.registry(), r.settings, readOnly, nil)
	if err != nil {
		return nil, err
	}
	return o.(stream.Opener), nil
}
