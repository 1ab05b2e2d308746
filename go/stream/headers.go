package stream

import (
	"context"
	"fmt"

	"github.com/model-streamer/model-streamer/go/integrity"
)

// ReadHeaders reads and validates the headers of uris, all files at once,
// and reads no tensor data. Each FileInfo lists every tensor of its file
// (Tensors == Header.Tensors, in file-offset order). It reads exactly
// each header (two requests per file: its length, then the header), never
// a speculative prefix of tensor data.
func ReadHeaders(ctx context.Context, cfg Config, uris []string) ([]FileInfo, error) {
	if cfg.Storage == nil {
		return nil, fmt.Errorf("%w: no storage configured", ErrInvalidRequest)
	}
	if len(uris) == 0 {
		return nil, fmt.Errorf("%w: no files given", ErrInvalidRequest)
	}
	s := &Stream{cfg: cfg.normalized(uris[0])}
	s.cfg.Verify = integrity.Off // no tensor is read: nothing to verify
	s.ctx, s.cancel = context.WithCancel(context.Background())
	stop := context.AfterFunc(ctx, s.cancel)
	defer stop()
	defer s.abort()
	if err := s.openFiles(uris, func(_ int, f *fileState) error { return s.openFile(f, headerOnly) }); err != nil {
		return nil, err
	}
	for _, f := range s.files {
		f.tensors = f.header.Tensors
		f.note = Verification{}
	}
	return s.Files(), nil
}
