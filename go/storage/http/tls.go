package http

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/model-streamer/model-streamer/go/storage"
)

// Where Go looks for the system roots on Linux (crypto/x509's certFiles
// and certDirectories): SSL_CERT_FILE replaces the files, SSL_CERT_DIR the
// directories, each independently of the other.
var (
	defaultCertFiles = []string{
		"/etc/ssl/certs/ca-certificates.crt",
		"/etc/pki/tls/certs/ca-bundle.crt",
		"/etc/ssl/ca-bundle.pem",
		"/etc/pki/tls/cacert.pem",
		"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
		"/etc/ssl/cert.pem",
	}
	defaultCertDirs = []string{"/etc/ssl/certs", "/etc/pki/tls/certs"}
)

// rootCAs returns the pool that verifies https servers, or nil for the
// system roots. The Go runtime reads SSL_CERT_FILE and SSL_CERT_DIR from
// the environment it started with, which a host process (Python) may have
// set later; they come here as settings and are applied the way Go would.
func rootCAs(s storage.Settings) (*x509.CertPool, error) {
	if bundle := strings.TrimSpace(s.Get(SettingCABundle, "")); bundle != "" {
		pool := x509.NewCertPool()
		if err := addPEMFile(pool, bundle); err != nil {
			return nil, fmt.Errorf("%s: %w", SettingCABundle, err)
		}
		return pool, nil
	}
	file := strings.TrimSpace(s.Get(SettingSSLCertFile, ""))
	dir := strings.TrimSpace(s.Get(SettingSSLCertDir, ""))
	if file == "" && dir == "" {
		return nil, nil
	}
	pool := x509.NewCertPool()
	if file != "" {
		if err := addPEMFile(pool, file); err != nil {
			return nil, fmt.Errorf("%s: %w", SettingSSLCertFile, err)
		}
	} else {
		for _, f := range defaultCertFiles {
			if addPEMFile(pool, f) == nil {
				break
			}
		}
	}
	dirs := defaultCertDirs
	if dir != "" {
		dirs = filepath.SplitList(dir)
	}
	for _, d := range dirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			if dir != "" && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("%s: %v", SettingSSLCertDir, err)
			}
			continue
		}
		for _, e := range entries {
			// Any file that parses; others (READMEs, CRLs) are skipped,
			// as Go skips them.
			_ = addPEMFile(pool, filepath.Join(d, e.Name()))
		}
	}
	return pool, nil
}

func addPEMFile(pool *x509.CertPool, path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("%s: %v", path, pe.Err)
		}
		return err
	}
	if !pool.AppendCertsFromPEM(data) {
		return fmt.Errorf("%s: no PEM certificate in the file", path)
	}
	return nil
}
