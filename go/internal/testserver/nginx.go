package testserver

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// NginxServer is a running nginx serving files from Root on 127.0.0.1,
// over http and https (with a certificate from a CA made for it).
//
// Locations (NAME is a path under Root/files, as Put writes it):
//
//	/files/NAME            the file, with byte ranges, ETag and Last-Modified
//	/norange/NAME          the file, ignoring Range (max_ranges 0: 200, whole body)
//	/getonly/NAME          the file, but 403 to HEAD (as a URL presigned for GET)
//	/private/NAME          403 unless "Authorization: Bearer <Token>"
//	/hub/NAME              403 unless "Authorization: Bearer <HubToken>"
//	/redirect/NAME         302 to /signed/NAME?AWSAccessKeyId=...&Expires=...&Signature=<sig>
//	/signed/NAME           the file when ?Signature= is the current signature, else 403
//	/cross/NAME            302 to http://localhost:<port>/noauth/NAME?Signature=... (another host)
//	/private-cross/NAME    as /cross/, but 403 without the Token first
//	/downgrade/NAME        302 to http://127.0.0.1:<port>/files/NAME (from https: a downgrade)
//	/loop/NAME             302 to /loop/again, for ever
//	/noauth/NAME           the file, but 400 when the request carries
//	                       Authorization, X-Api-Key or Cookie (a leaked credential)
//
// SetSignature changes the signature /redirect/ hands out and /signed/
// accepts, as a presigning control plane whose old links expire.
type NginxServer struct {
	URL      string // http://127.0.0.1:PORT
	TLSURL   string // https://127.0.0.1:PORT
	Host     string // 127.0.0.1:PORT (http)
	Root     string // files are under Root/files
	CAFile   string // PEM of the CA that signed the https certificate
	Token    string // the bearer token /private/ wants
	HubToken string // the bearer token /hub/ wants
	dir      string
	proc     *process
}

// Nginx starts nginx for t and stops it when t ends. The binary is the
// system's (/usr/sbin/nginx or nginx on PATH, from Debian's nginx-light),
// which ci/install-servers.sh installs.
func Nginx(t testing.TB) *NginxServer {
	t.Helper()
	bin := nginxBinary(t)
	s := &NginxServer{Token: "secret-token", HubToken: "hf_test_token"}
	sp := spec{
		name:   "nginx",
		nports: 2,
		command: func(ports []int, dir string) ([]string, []string) {
			s.dir = dir
			if err := s.writeConfig(ports, dir); err != nil {
				t.Fatalf("testserver: nginx config: %v", err)
			}
			return []string{bin, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log")}, nil
		},
		ready: func(c *http.Client, ports []int) bool {
			return httpOK(c, "http://"+hostPort(ports[0])+"/health", http.StatusOK)
		},
	}
	p, ports := start(t, sp)
	s.proc = p
	s.Host = hostPort(ports[0])
	s.URL = "http://" + s.Host
	s.TLSURL = "https://" + hostPort(ports[1])
	return s
}

func nginxBinary(t testing.TB) string {
	t.Helper()
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	missing(t, "nginx", "/usr/sbin/nginx")
	return ""
}

var nginxConf = template.Must(template.New("nginx").Parse(`
{{if .Root}}user root root;{{end}}
daemon off;
worker_processes 2;
worker_shutdown_timeout 1s;
pid {{.Dir}}/nginx.pid;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path {{.Dir}}/tmp/body;
	proxy_temp_path {{.Dir}}/tmp/proxy;
	fastcgi_temp_path {{.Dir}}/tmp/fastcgi;
	uwsgi_temp_path {{.Dir}}/tmp/uwsgi;
	scgi_temp_path {{.Dir}}/tmp/scgi;
	sendfile on;
	tcp_nopush on;
	keepalive_requests 1000000;
	keepalive_timeout 75s;
	default_type application/octet-stream;
	types { }
	server {
		listen 127.0.0.1:{{.Port}};
		listen 127.0.0.1:{{.TLSPort}} ssl;
		server_name 127.0.0.1 localhost;
		ssl_certificate {{.Dir}}/server.pem;
		ssl_certificate_key {{.Dir}}/server.key;
		root {{.Dir}}/www;
		include {{.Dir}}/signature.conf;

		location = /health { return 200 "ok\n"; }
		location /files/ { }
		location /norange/ { alias {{.Dir}}/www/files/; max_ranges 0; }
		location /getonly/ {
			alias {{.Dir}}/www/files/;
			if ($request_method = HEAD) { return 403; }
		}
		location /private/ {
			alias {{.Dir}}/www/files/;
			if ($http_authorization != "Bearer {{.Token}}") { return 403; }
		}
		location /hub/ {
			alias {{.Dir}}/www/files/;
			if ($http_authorization != "Bearer {{.HubToken}}") { return 403; }
		}
		location ~ ^/redirect/(.*)$ {
			return 302 /signed/$1?AWSAccessKeyId=AKIDEXAMPLE&Expires=4102444800&Signature=$signature;
		}
		location /signed/ {
			alias {{.Dir}}/www/files/;
			if ($arg_Signature != $signature) { return 403; }
		}
		location ~ ^/cross/(.*)$ {
			return 302 http://localhost:{{.Port}}/noauth/$1?Signature=$signature;
		}
		location ~ ^/private-cross/(.*)$ {
			if ($http_authorization != "Bearer {{.Token}}") { return 403; }
			return 302 http://localhost:{{.Port}}/noauth/$1?Signature=$signature;
		}
		location ~ ^/downgrade/(.*)$ { return 302 http://127.0.0.1:{{.Port}}/files/$1; }
		location /loop/ { return 302 /loop/again; }
		location /noauth/ {
			alias {{.Dir}}/www/files/;
			if ($http_authorization) { return 400; }
			if ($http_x_api_key) { return 400; }
			if ($http_cookie) { return 400; }
		}
	}
}
`))

func (s *NginxServer) writeConfig(ports []int, dir string) error {
	s.Root = filepath.Join(dir, "www")
	for _, d := range []string{"tmp", "www/files"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := writeCerts(dir); err != nil {
		return err
	}
	s.CAFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(filepath.Join(dir, "signature.conf"), []byte(`set $signature "sig1";`+"\n"), 0o644); err != nil {
		return err
	}
	var b bytes.Buffer
	err := nginxConf.Execute(&b, map[string]any{
		// As root, nginx would run its workers as nobody, who cannot read
		// a test's temporary directory.
		"Root": os.Geteuid() == 0,
		"Dir":  dir, "Port": ports[0], "TLSPort": ports[1],
		"Token": s.Token, "HubToken": s.HubToken,
	})
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "nginx.conf"), b.Bytes(), 0o644)
}

// Put writes data as Root/files/name (atomically: a new file renamed over
// any old one, as a deploy replaces a file) and returns its http URL.
// Its modification time is set to now plus a counter of seconds, so a
// replaced file never keeps its old ETag (nginx makes it from the
// modification time and the size).
func (s *NginxServer) Put(t testing.TB, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(s.Root, "files", filepath.FromSlash(name))
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatalf("testserver: %v", err)
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatalf("testserver: %v", err)
	}
	mtime := time.Now().Add(time.Duration(putCount.Add(1)) * time.Second)
	if err := os.Chtimes(tmp, mtime, mtime); err != nil {
		t.Fatalf("testserver: %v", err)
	}
	if err := os.Rename(tmp, p); err != nil {
		t.Fatalf("testserver: %v", err)
	}
	return s.URL + "/files/" + name
}

// putCount makes each Put's modification time distinct.
var putCount atomic.Int64

// SetSignature makes /redirect/ hand out sig and /signed/ accept only it,
// reloading nginx, and returns once every worker that knew the old one has
// exited (within worker_shutdown_timeout, which closes the connections
// clients keep alive), so no request sees it.
func (s *NginxServer) SetSignature(t testing.TB, sig string) {
	t.Helper()
	conf := fmt.Sprintf("set $signature %q;\n", sig)
	if err := os.WriteFile(filepath.Join(s.dir, "signature.conf"), []byte(conf), 0o644); err != nil {
		t.Fatalf("testserver: %v", err)
	}
	master := s.proc.cmd.Process.Pid
	old := childPIDs(master)
	if err := syscall.Kill(master, syscall.SIGHUP); err != nil {
		t.Fatalf("testserver: reload nginx: %v", err)
	}
	c := loopbackClient(2 * time.Second)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	deadline := time.Now().Add(ReadyTimeout)
	for {
		done := true
		for _, pid := range old {
			if syscall.Kill(pid, 0) == nil {
				done = false
			}
		}
		if done {
			resp, err := c.Get(s.URL + "/redirect/none")
			if err == nil {
				resp.Body.Close()
				if strings.HasSuffix(resp.Header.Get("Location"), "Signature="+sig) {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("testserver: nginx did not take signature %q within %v (workers before the reload %v, now %v)", sig, ReadyTimeout, old, childPIDs(master))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// childPIDs lists pid's children (nginx's workers).
func childPIDs(pid int) []int {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", pid, pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if n, err := strconv.Atoi(f); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// writeCerts makes a CA (ca.pem) and a server certificate for 127.0.0.1,
// ::1 and localhost signed by it (server.pem, server.key) in dir.
func writeCerts(dir string) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "model-streamer test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	for name, block := range map[string]*pem.Block{
		"ca.pem":     {Type: "CERTIFICATE", Bytes: caDER},
		"server.pem": {Type: "CERTIFICATE", Bytes: der},
		"server.key": {Type: "EC PRIVATE KEY", Bytes: keyDER},
	} {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(block), 0o600); err != nil {
			return err
		}
	}
	return nil
}
