// Package s3 is the storage backend for Amazon S3 and S3-compatible object
// stores (MinIO, Ceph RGW, Google Cloud Storage's XML API with HMAC keys, ...).
//
// URIs have the form s3://bucket/key. The backend also serves gs://bucket/key
// when AWS_ENDPOINT_URL points at GCS's S3-compatible endpoint
// (https://storage.googleapis.com, HMAC keys as AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY): the caller registers it for that scheme. URIs are
// reported exactly as given, keys are taken literally (no percent-decoding).
//
// # Settings
//
// Configuration comes from storage.Settings, named after the environment
// variables that document it. The AWS SDK's own loader still runs (it reads
// the shared configuration files and the environment this process started
// with), but every setting present in Settings takes precedence over it.
//
//   - AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL: endpoint of an S3-compatible
//     store, e.g. http://127.0.0.1:9000 (the first one set wins; "https://"
//     is assumed when the value has no scheme). Only Settings are consulted
//     for the endpoint: an endpoint in the process environment but not in
//     Settings is ignored, so whether a custom endpoint is in use is always
//     the caller's decision.
//   - RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING: "1" addresses buckets as
//     virtual hosts (https://bucket.host/key), "0" in the path
//     (https://host/bucket/key). Unset: virtual-hosted style for AWS (no
//     endpoint setting), path style when an endpoint is set, because most
//     compatible stores (MinIO, Ceph, a store on an IP address) need it and
//     GCS accepts both. Set "1" for a compatible store that only accepts
//     virtual hosts.
//   - AWS_REGION, then AWS_DEFAULT_REGION: the signing region; when neither
//     is set here nor in the shared config file, us-east-1.
//   - AWS_CA_BUNDLE: PEM file of the certificate authorities trusted for
//     HTTPS instead of the system's roots.
//   - AWS_EC2_METADATA_DISABLED: "true" keeps the SDK from ever calling the
//     EC2 instance metadata service (169.254.169.254) for credentials;
//     recommended with compatible stores, where the lookup only adds delay.
//   - RUNAI_STREAMER_S3_UNSIGNED: "1" (or "true") sends every request
//     unsigned, with no credentials at all, as anonymous requests to a public
//     bucket need: no credential chain runs (no keys, profile, web identity,
//     container or instance lookup) and keys in Settings are ignored. A
//     private bucket then answers 403, which surfaces as
//     storage.PermissionDenied naming the object. Unset or "0": signed, with
//     the credentials below.
//   - Credentials, first match wins:
//     1. AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN):
//     static credentials.
//     2. AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN (+ AWS_ROLE_SESSION_NAME):
//     AssumeRoleWithWebIdentity through STS (EKS service accounts).
//     3. AWS_PROFILE (or its older name AWS_DEFAULT_PROFILE, which the
//     C++ and CLI SDKs still read): that profile of the shared files (AWS_CONFIG_FILE,
//     AWS_SHARED_CREDENTIALS_FILE when set here, else ~/.aws/config and
//     ~/.aws/credentials), with everything a profile can name (SSO,
//     credential_process, role assumption).
//     4. AWS_CONTAINER_CREDENTIALS_RELATIVE_URI or
//     AWS_CONTAINER_CREDENTIALS_FULL_URI (+ AWS_CONTAINER_AUTHORIZATION_TOKEN
//     or AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE): ECS/EKS container
//     credentials. A plain-http FULL_URI must name a loopback or the
//     ECS/EKS link-local address.
//     5. Otherwise the SDK's default chain: the process environment, the
//     default profile of the shared files, container credentials, the EC2
//     instance role (unless AWS_EC2_METADATA_DISABLED).
//   - AWS_MAX_ATTEMPTS: attempts the SDK makes for metadata requests
//     (HeadObject, ListObjectsV2); default 5.
//   - MODEL_STREAMER_STALL_TIMEOUT_MS: a request that receives no byte (no
//     response header, no body byte) for this long is aborted as a stalled
//     transfer (storage.Unavailable); default 30000, 0 disables.
//   - RUNAI_STREAMER_S3_TRACE: "1" writes a line per HTTP request (URL
//     without its query, range, status, bytes, timings; no secret) to
//     model-streamer-trace-<pid>.log in the working directory (package
//     tracelog).
//
// When an endpoint is set, the SDK's request checksum calculation and response
// checksum validation are set to "when required": compatible stores often
// reject or lack the newer default checksums.
//
// # Retries
//
// The engine retries storage.Unavailable reads per chunk, resuming at the
// last byte received and honouring storage.Error.RetryAfter. So data reads
// (ranged GetObject) make at most 2 attempts in the SDK, and the second only
// for a connection-level failure before any response arrived (a refused or
// reset connection, typically a keep-alive connection the server had just
// closed); an HTTP error status (503 SlowDown, 500) or a broken body goes
// straight back to the engine with the server's Retry-After. Metadata requests
// (Open's HeadObject, List's pages) use the SDK's standard retryer with
// AWS_MAX_ATTEMPTS attempts and no client-side retry quota.
//
// # Reads
//
// ReadAt issues one ranged GetObject, clipped to the object's size, with
// If-Match set to the ETag seen by Open, so all bytes come from the same
// version of the object: a replaced object fails with storage.InvalidArgument
// rather than mixing versions. The response's Content-Range is checked
// against the request; a server that ignores Range (200 with the whole object)
// is handled by skipping up to the offset when it is small and is an error
// otherwise.
//
// # Checksums
//
// Open's HeadObject asks for the stored checksums (x-amz-checksum-mode:
// ENABLED) and the object offers, through storage.Checksummed, the values
// that cover the whole object: x-amz-checksum-crc32c, -crc32, -crc64nvme
// (and -md5) of a FULL_OBJECT checksum type, which single-part uploads and
// full-object multipart uploads have; otherwise the ETag, when it is the
// content's MD5 (32 hex digits: a single-part upload, not encrypted with
// SSE-KMS or SSE-C). A COMPOSITE checksum ("<base64>-<parts>", the default
// of multipart uploads by older SDKs) and a multipart ETag are checksums of
// the parts' checksums: no read of the object computes them, so such an
// object offers none (NoChecksumReason says why). A server that rejects
// the checksum mode (400 or 501) is asked again without it, and never again.
// SHA-1 and SHA-256 checksums are not used: no pass at wire speed computes
// them in parallel.
//
// # Tuning
//
// The backend asks the engine (storage.Tuned) for 16 MiB reads, 32 in
// flight, unless the caller sets RUNAI_STREAMER_CHUNK_BYTESIZE or
// RUNAI_STREAMER_CONCURRENCY. A remote store costs a round trip and a time
// to first byte per request (tens of milliseconds) and gives each connection
// a bounded rate (S3: on the order of 100 MB/s), so throughput comes from
// many large requests at once. BenchmarkReadAt with a 30 ms first-byte delay
// (S3_BENCH_LATENCY=30ms) shows one reader at 95, 166, 334 and 440 MB/s for
// 4, 8, 16 and 32 MiB ranges: 16 MiB is the knee, where 32 MiB doubles the
// memory in flight and the bytes a retry repeats for a quarter more. 32
// readers of 16 MiB (512 MiB in flight) cover about 3 GB/s at 100 MB/s per
// connection. Against MinIO on loopback the figures are CPU-bound (the
// server and the client share the host) and flat in concurrency; the client
// spends its time in read(2), the SDK's share of a request is a few percent.
// BenchmarkReadAt measures this against the same signed ranged GETs through
// plain net/http: the client's CPU per byte (and MinIO's) is the same within
// noise, about 0.2 ns/B, so the data path goes through the SDK (its retryer,
// error classification and endpoint handling) at no measurable cost, and
// ReadAt reads the body straight into the caller's buffer (no intermediate
// copy).
// The transport keeps up to 256 idle connections per host, so any
// concurrency up to that reuses warm connections.
package s3

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/endpointcreds"
	"github.com/aws/aws-sdk-go-v2/credentials/stscreds"
	"github.com/aws/aws-sdk-go-v2/feature/ec2/imds"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/model-streamer/model-streamer/go/storage"
	"github.com/model-streamer/model-streamer/go/storage/tracelog"
)

// Setting names read by New.
const (
	SettingEndpoint           = "AWS_ENDPOINT_URL"
	SettingEndpointS3         = "AWS_ENDPOINT_URL_S3"
	SettingVirtualAddressing  = "RUNAI_STREAMER_S3_USE_VIRTUAL_ADDRESSING"
	SettingUnsigned           = "RUNAI_STREAMER_S3_UNSIGNED"
	SettingRegion             = "AWS_REGION"
	SettingDefaultRegion      = "AWS_DEFAULT_REGION"
	SettingCABundle           = "AWS_CA_BUNDLE"
	SettingIMDSDisabled       = "AWS_EC2_METADATA_DISABLED"
	SettingAccessKeyID        = "AWS_ACCESS_KEY_ID"
	SettingSecretAccessKey    = "AWS_SECRET_ACCESS_KEY"
	SettingSessionToken       = "AWS_SESSION_TOKEN"
	SettingProfile            = "AWS_PROFILE"
	SettingDefaultProfile     = "AWS_DEFAULT_PROFILE"
	SettingConfigFile         = "AWS_CONFIG_FILE"
	SettingCredentialsFile    = "AWS_SHARED_CREDENTIALS_FILE"
	SettingWebIdentityFile    = "AWS_WEB_IDENTITY_TOKEN_FILE"
	SettingRoleARN            = "AWS_ROLE_ARN"
	SettingRoleSessionName    = "AWS_ROLE_SESSION_NAME"
	SettingContainerRelative  = "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"
	SettingContainerFull      = "AWS_CONTAINER_CREDENTIALS_FULL_URI"
	SettingContainerToken     = "AWS_CONTAINER_AUTHORIZATION_TOKEN"
	SettingContainerTokenFile = "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
	SettingMaxAttempts        = "AWS_MAX_ATTEMPTS"
	SettingStallTimeoutMS     = "MODEL_STREAMER_STALL_TIMEOUT_MS"
)

// Defaults.
const (
	DefaultRegion       = "us-east-1"
	DefaultStallTimeout = 30 * time.Second
	// DefaultMetaAttempts is the SDK's attempt budget for HeadObject and
	// ListObjectsV2.
	DefaultMetaAttempts = 5
	// dataAttempts is the SDK's attempt budget for a ranged GetObject; the
	// second attempt only follows a connection failure before any response.
	dataAttempts = 2

	// ChunkBytes and Concurrency are the Tuned defaults (see "Tuning" in
	// the package documentation).
	ChunkBytes  = 16 << 20
	Concurrency = 32

	// maxIdleConnsPerHost keeps a warm connection for every reader the
	// engine may run against one endpoint (RUNAI_STREAMER_CONCURRENCY up to
	// this many).
	maxIdleConnsPerHost = 256
)

// backend is the storage.Backend for s3:// (and gs:// in HMAC mode) URIs.
type backend struct {
	client       *s3.Client
	dataRetryer  aws.Retryer
	stallTimeout time.Duration
	endpoint     string // "" for AWS
	pathStyle    bool
	// checksumModeRejected: the server refused HeadObject's checksum mode
	// once; object.go asks without it from then on.
	checksumModeRejected atomic.Bool
}

var (
	_ storage.Backend = (*backend)(nil)
	_ storage.Lister  = (*backend)(nil)
	_ storage.Tuned   = (*backend)(nil)
)

// New returns a backend configured by settings (see the package
// documentation). It does no network I/O: a wrong endpoint or missing
// credentials show up in the first Open.
func New(settings storage.Settings) (storage.Backend, error) {
	b, err := newBackend(settings)
	var se *storage.Error
	switch {
	case errors.As(err, &se):
		return nil, err // classified already (the trace file)
	case err != nil:
		return nil, &storage.Error{Op: "configure s3", Code: storage.InvalidArgument, Err: err}
	}
	return b, nil
}

// DefaultChunkBytes is the read size the engine uses for objects of this
// backend unless the caller sets one.
func (b *backend) DefaultChunkBytes() int64 { return ChunkBytes }

// DefaultConcurrency is the number of reads the engine keeps in flight
// against this backend unless the caller sets one.
func (b *backend) DefaultConcurrency() int { return Concurrency }

func newBackend(s storage.Settings) (*backend, error) {
	endpoint, err := endpointSetting(s)
	if err != nil {
		return nil, err
	}
	stall := DefaultStallTimeout
	if v := s.Get(SettingStallTimeoutMS, ""); v != "" {
		ms, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if err != nil || ms < 0 {
			return nil, fmt.Errorf("%s=%q: want milliseconds (0: no stall detection)", SettingStallTimeoutMS, v)
		}
		if ms == 0 {
			ms = math.MaxInt64 / int64(time.Millisecond) // 0 disables, as for every backend
		}
		stall = time.Duration(ms) * time.Millisecond
	}
	metaAttempts := DefaultMetaAttempts
	if v := s.Get(SettingMaxAttempts, ""); v != "" {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%s=%q: want a positive integer", SettingMaxAttempts, v)
		}
		metaAttempts = n
	}
	pathStyle := !s.Bool(SettingVirtualAddressing, endpoint == "")
	trace, err := tracelog.FromSettings(s)
	if err != nil {
		return nil, err
	}

	opts := []func(*config.LoadOptions) error{
		config.WithDefaultRegion(DefaultRegion),
		config.WithHTTPClient(newHTTPClient()),
	}
	if r := s.Get(SettingRegion, s.Get(SettingDefaultRegion, "")); r != "" {
		opts = append(opts, config.WithRegion(r))
	}
	if v, ok := s[SettingIMDSDisabled]; ok && strings.TrimSpace(v) != "" {
		state := imds.ClientEnabled
		if s.Bool(SettingIMDSDisabled, false) {
			state = imds.ClientDisabled
		}
		opts = append(opts, config.WithEC2IMDSClientEnableState(state))
	}
	if f := s.Get(SettingConfigFile, ""); f != "" {
		opts = append(opts, config.WithSharedConfigFiles([]string{f}))
	}
	if f := s.Get(SettingCredentialsFile, ""); f != "" {
		opts = append(opts, config.WithSharedCredentialsFiles([]string{f}))
	}
	caBundle := s.Get(SettingCABundle, "")
	if caBundle != "" {
		// The SDK parses it (a system bundle of ~150 certificates is about
		// 1.5 ms) and fails when nothing in it parses; no second parse here.
		pem, err := os.ReadFile(caBundle)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", SettingCABundle, err)
		}
		opts = append(opts, config.WithCustomCABundle(bytes.NewReader(pem)))
	}
	if endpoint != "" {
		opts = append(opts,
			config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
			config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired))
	}
	unsigned := s.Bool(SettingUnsigned, false)
	keyID, secret := s.Get(SettingAccessKeyID, ""), s.Get(SettingSecretAccessKey, "")
	webIdentity := s.Get(SettingWebIdentityFile, "") != "" && s.Get(SettingRoleARN, "") != ""
	switch {
	case unsigned:
		// Anonymous credentials make the SDK skip signing altogether; no
		// other provider is consulted, so nothing probes for credentials.
		opts = append(opts, config.WithCredentialsProvider(aws.AnonymousCredentials{}))
	case keyID != "" || secret != "":
		if keyID == "" || secret == "" {
			return nil, fmt.Errorf("%s and %s must be set together", SettingAccessKeyID, SettingSecretAccessKey)
		}
		opts = append(opts, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(keyID, secret, s.Get(SettingSessionToken, ""))))
	case webIdentity:
		// Resolved below: the STS client needs the loaded configuration.
	case s.Get(SettingProfile, s.Get(SettingDefaultProfile, "")) != "":
		opts = append(opts, config.WithSharedConfigProfile(s.Get(SettingProfile, s.Get(SettingDefaultProfile, ""))))
	default:
		p, err := containerProvider(s)
		if err != nil {
			return nil, err
		}
		if p != nil {
			opts = append(opts, config.WithCredentialsProvider(aws.NewCredentialsCache(p)))
		}
	}

	cfg, err := config.LoadDefaultConfig(context.Background(), opts...)
	if err != nil {
		if caBundle != "" && strings.Contains(err.Error(), "CA bundle") {
			return nil, fmt.Errorf("%s=%s: no PEM certificate in the file (%w)", SettingCABundle, caBundle, err)
		}
		return nil, err
	}
	if !unsigned && keyID == "" && webIdentity {
		p := stscreds.NewWebIdentityRoleProvider(sts.NewFromConfig(cfg), s.Get(SettingRoleARN, ""),
			stscreds.IdentityTokenFile(s.Get(SettingWebIdentityFile, "")),
			func(o *stscreds.WebIdentityRoleOptions) {
				o.RoleSessionName = s.Get(SettingRoleSessionName, "")
			})
		cfg.Credentials = aws.NewCredentialsCache(p)
	}

	b := &backend{
		stallTimeout: stall,
		endpoint:     endpoint,
		pathStyle:    pathStyle,
		dataRetryer: retry.NewStandard(func(o *retry.StandardOptions) {
			o.MaxAttempts = dataAttempts
			o.RateLimiter = ratelimit.None
			o.MaxBackoff = 200 * time.Millisecond
			o.Retryables = []retry.IsErrorRetryable{connectionRetryable{}}
		}),
	}
	// The watchdog wraps the built client: config wanted a BuildableClient
	// to install the CA bundle, which it has done by now. The trace wraps
	// the watchdog, so that a stall is traced as such.
	hc := trace.Client("s3", &stallClient{inner: cfg.HTTPClient, timeout: stall})
	b.client = s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.HTTPClient = hc
		o.UsePathStyle = pathStyle
		o.BaseEndpoint = nil
		if endpoint != "" {
			o.BaseEndpoint = aws.String(endpoint)
		}
		o.RetryMaxAttempts = 0
		o.Retryer = retry.NewStandard(func(so *retry.StandardOptions) {
			so.MaxAttempts = metaAttempts
			so.RateLimiter = ratelimit.None
			so.Retryables = append([]retry.IsErrorRetryable{permanentError{}}, so.Retryables...)
		})
		o.DisableLogOutputChecksumValidationSkipped = true
	})
	return b, nil
}

// endpointSetting returns the custom endpoint URL, "" for AWS.
func endpointSetting(s storage.Settings) (string, error) {
	ep := strings.TrimSpace(s.Get(SettingEndpointS3, s.Get(SettingEndpoint, "")))
	if ep == "" {
		return "", nil
	}
	if !strings.Contains(ep, "://") {
		ep = "https://" + ep
	}
	u, err := url.Parse(ep)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return "", fmt.Errorf("%s=%q: want an http or https URL", SettingEndpoint, ep)
	}
	return ep, nil
}

// newHTTPClient returns the SDK's buildable client with a transport sized for
// many concurrent large ranged GETs: a warm keep-alive connection per reader,
// bounded dial and TLS handshake times, HTTP/1.1 only (one TCP connection per
// transfer beats multiplexing large bodies over one HTTP/2 connection), and no
// transparent decompression (byte ranges must stay byte ranges).
func newHTTPClient() *awshttp.BuildableClient {
	return awshttp.NewBuildableClient().
		WithReadTimeout(0). // the stall watchdog does this per request
		WithDialerOptions(func(d *net.Dialer) {
			d.Timeout = 10 * time.Second
			d.KeepAlive = 30 * time.Second
		}).
		WithTransportOptions(func(tr *http.Transport) {
			tr.Proxy = http.ProxyFromEnvironment
			tr.MaxIdleConns = 4 * maxIdleConnsPerHost
			tr.MaxIdleConnsPerHost = maxIdleConnsPerHost
			tr.MaxConnsPerHost = 0
			tr.IdleConnTimeout = 90 * time.Second
			tr.TLSHandshakeTimeout = 10 * time.Second
			tr.ExpectContinueTimeout = time.Second
			tr.DisableCompression = true
			tr.ForceAttemptHTTP2 = false
			tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
			tr.ReadBufferSize = 64 << 10
			tr.WriteBufferSize = 16 << 10
		})
}

// containerProvider returns ECS/EKS container credentials named in s, or nil.
func containerProvider(s storage.Settings) (aws.CredentialsProvider, error) {
	var ep string
	switch {
	case s.Get(SettingContainerRelative, "") != "":
		ep = "http://169.254.170.2" + s.Get(SettingContainerRelative, "")
	case s.Get(SettingContainerFull, "") != "":
		ep = s.Get(SettingContainerFull, "")
		u, err := url.Parse(ep)
		if err != nil || u.Hostname() == "" {
			return nil, fmt.Errorf("%s=%q: not a URL", SettingContainerFull, ep)
		}
		if u.Scheme == "http" && !containerHostAllowed(u.Hostname()) {
			return nil, fmt.Errorf("%s=%q: a plain-http container credentials endpoint must be a loopback or the ECS/EKS address", SettingContainerFull, ep)
		}
	default:
		return nil, nil
	}
	tokenFile, token := s.Get(SettingContainerTokenFile, ""), s.Get(SettingContainerToken, "")
	return endpointcreds.New(ep, func(o *endpointcreds.Options) {
		switch {
		case tokenFile != "":
			o.AuthorizationTokenProvider = endpointcreds.TokenProviderFunc(func() (string, error) {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return "", err
				}
				return strings.TrimSpace(string(b)), nil
			})
		case token != "":
			o.AuthorizationToken = token
		}
	}), nil
}

func containerHostAllowed(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return false
	}
	return ip.IsLoopback() || ip.Equal(net.IPv4(169, 254, 170, 2)) ||
		ip.Equal(net.IPv4(169, 254, 170, 23)) || ip.Equal(net.ParseIP("fd00:ec2::23"))
}

// connectionRetryable lets the data retryer repeat a GetObject only after a
// connection-level failure before any response, never after a stall (the
// engine retries those, with its own backoff, from the bytes it has).
type connectionRetryable struct{}

func (connectionRetryable) IsErrorRetryable(err error) aws.Ternary {
	var se *StallError
	if errors.As(err, &se) || isCertificateError(err) {
		return aws.FalseTernary
	}
	return retry.RetryableConnectionError{}.IsErrorRetryable(err)
}

// permanentError keeps the metadata retryer from repeating a request that
// failed on an untrusted certificate (the SDK counts any failed send as a
// connection error).
type permanentError struct{}

func (permanentError) IsErrorRetryable(err error) aws.Ternary {
	if isCertificateError(err) {
		return aws.FalseTernary
	}
	return aws.UnknownTernary
}

// parseURI splits scheme://bucket/key.
func parseURI(uri string) (scheme, bucket, key string, err error) {
	scheme, rest, ok := strings.Cut(uri, "://")
	if !ok || (scheme != "s3" && scheme != "gs") {
		return "", "", "", fmt.Errorf("not an s3:// or gs:// URI")
	}
	bucket, key, _ = strings.Cut(rest, "/")
	if bucket == "" {
		return "", "", "", fmt.Errorf("no bucket name")
	}
	return scheme, bucket, key, nil
}
