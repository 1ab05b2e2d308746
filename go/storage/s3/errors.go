package s3

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"

	"github.com/model-streamer/model-streamer/go/storage"
)

// sdkError gives an SDK error without its "operation error S3: GetObject,
// https response error ..." framing, which repeats what storage.Error says.
type sdkError struct {
	msg string
	err error
}

func (e *sdkError) Error() string { return e.msg }
func (e *sdkError) Unwrap() error { return e.err }

// toError classifies err from an operation on uri. ctx is the caller's
// context: its cancellation, and only its, is Canceled.
func toError(ctx context.Context, op, uri string, off, n int64, err error) *storage.Error {
	se := &storage.Error{Op: op, URI: uri, Off: off, Len: n, Err: err}
	if n == 0 {
		se.Off = 0
	}
	if cerr := ctx.Err(); cerr != nil {
		se.Code, se.Err = storage.Canceled, cerr
		return se
	}
	var stall *StallError
	var re *awshttp.ResponseError
	var ae smithy.APIError
	var ip *smithy.InvalidParamsError
	var send interface{ ConnectionError() bool }
	switch {
	case errors.As(err, &stall):
		se.Code, se.Err = storage.Unavailable, stall
	case isCertificateError(err):
		se.Code, se.Err = storage.InvalidArgument, &sdkError{msg: sendMessage(err), err: err}
	case errors.As(err, &send) && send.ConnectionError():
		// Checked before the response error: the S3 client wraps a failed
		// send in one too, with status 0.
		se.Code, se.Err = storage.Unavailable, &sdkError{msg: sendMessage(err), err: err}
	case errors.As(err, &re) && re.ResponseError != nil && re.Response != nil && re.Response.Response != nil && re.HTTPStatusCode() > 0:
		he := &storage.HTTPError{Status: re.HTTPStatusCode(), RequestID: re.ServiceRequestID(), Err: err}
		if errors.As(err, &ae) {
			he.Code, he.Message = ae.ErrorCode(), ae.ErrorMessage()
		}
		if he.Message == "" && he.Code == "" {
			he.Message = http.StatusText(he.Status)
		}
		se.Code, se.Err = classify(he.Status, he.Code), he
		se.RetryAfter = storage.RetryAfter(re.Response.Header, time.Now())
	case errors.As(err, &ip):
		se.Code, se.Err = storage.InvalidArgument, &sdkError{msg: ip.Error(), err: err}
	case errors.As(err, &ae):
		se.Code = classify(0, ae.ErrorCode())
		se.Err = &sdkError{msg: ae.ErrorCode() + ": " + ae.ErrorMessage(), err: err}
	default:
		// Body read errors (unexpected EOF, connection reset) and anything
		// unrecognized: worth another try.
		se.Code = storage.Unavailable
		if strings.Contains(err.Error(), "failed to retrieve credentials") ||
			strings.Contains(err.Error(), "failed to refresh cached credentials") {
			se.Code = storage.PermissionDenied
		}
	}
	return se
}

// isCertificateError reports a TLS peer the client does not trust: a
// configuration problem (AWS_CA_BUNDLE, endpoint), not worth retrying.
func isCertificateError(err error) bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var he x509.HostnameError
	var ci x509.CertificateInvalidError
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &he) || errors.As(err, &ci)
}

// sendMessage describes a request that failed before any response without
// the SDK's framing: "dial tcp 127.0.0.1:9000: connect: connection refused",
// "tls: failed to verify certificate: x509: ...".
func sendMessage(err error) string {
	var cv *tls.CertificateVerificationError
	var op *net.OpError
	var ue *url.Error
	switch {
	case errors.As(err, &cv):
		return cv.Error()
	case errors.As(err, &op):
		return op.Error()
	case errors.As(err, &ue):
		return ue.Err.Error()
	}
	return err.Error()
}

// classify maps an S3 error code and HTTP status to a storage.Code. Codes
// decide first (S3 answers RequestTimeout and ExpiredToken with 400), then
// the status.
func classify(status int, code string) storage.Code {
	switch code {
	case "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchVersion":
		return storage.NotFound
	case "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden",
		"ExpiredToken", "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled",
		"AccountProblem", "InvalidObjectState", "RequestTimeTooSkewed", "InvalidSecurity",
		"MissingSecurityHeader", "UnauthorizedAccess":
		return storage.PermissionDenied
	case "SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
		"Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequests",
		"RequestLimitExceeded", "OperationAborted", "XMinioServerNotInitialized":
		return storage.Unavailable
	case "PreconditionFailed":
		return storage.InvalidArgument
	}
	switch {
	case status < 300:
		return storage.Unavailable // no error status: a broken exchange
	case status < 400:
		return storage.InvalidArgument // a redirect the SDK did not follow
	}
	return storage.CodeForHTTPStatus(status)
}
