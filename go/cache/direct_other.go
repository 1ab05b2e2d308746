//go:build !linux

package cache

import (
	"errors"
	"os"
)

var errDirectRefused = errors.New("O_DIRECT write refused")

// openDirectFile: O_DIRECT is Linux's; elsewhere entries are written buffered.
func openDirectFile(string) (*os.File, error) { return nil, errDirectRefused }

func (d *directFile) pwrite([]byte, int64) error { return errDirectRefused }
