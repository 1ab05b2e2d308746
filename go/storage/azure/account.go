package azure

import (
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blockblob"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/sas"
)

// account is a storage account as this backend talks to it: the blob
// service's URL and how requests are authorised. The SDK's blob and
// blockblob clients are made from it per blob; listing is one REST call
// made here. The SDK's account and container clients (package azblob and
// azblob/container) are not used: they link Apache Arrow and its
// compression libraries (for a listing format this backend does not ask
// for), which cost every process that loads the library about 0.6 ms of
// start-up and 3.6 MB (docs/benchmarks.md).
type account struct {
	endpoint string // the blob service URL, ending in "/", without a query
	query    string // SAS parameters every request carries, or ""
	key      *blob.SharedKeyCredential
	token    azcore.TokenCredential
	opts     policy.ClientOptions
	list     runtime.Pipeline // for List Blobs
}

// listVersion is the x-ms-version of List Blobs requests.
const listVersion = "2024-11-04"

func newAccount(endpoint string, key *blob.SharedKeyCredential, token azcore.TokenCredential, opts policy.ClientOptions) (*account, error) {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("blob endpoint %q is not a URL", endpoint)
	}
	a := &account{query: u.RawQuery, key: key, token: token, opts: opts}
	u.RawQuery, u.Fragment = "", ""
	a.endpoint = u.String()
	if !strings.HasSuffix(a.endpoint, "/") {
		a.endpoint += "/"
	}
	var plOpts runtime.PipelineOptions
	if token != nil {
		plOpts.PerRetry = []policy.Policy{runtime.NewBearerTokenPolicy(token, []string{"https://storage.azure.com/.default"}, nil)}
	}
	a.list = runtime.NewPipeline("model-streamer", "1", plOpts, &a.opts)
	return a, nil
}

// blobURL is the URL of the blob name in container c; the name is
// percent-encoded, "/" included, as the SDK's container client does.
func (a *account) blobURL(c, name string) string {
	u := a.endpoint + c + "/" + url.PathEscape(name)
	if a.query != "" {
		u += "?" + a.query
	}
	return u
}

// blobClient is the blob client inside blockBlobClient's (the same URL,
// credential and pipeline), so the choice of credential is made in one place.
func (a *account) blobClient(c, name string) (*blob.Client, error) {
	bb, err := a.blockBlobClient(c, name)
	if err != nil {
		return nil, err
	}
	return bb.BlobClient(), nil
}

func (a *account) blockBlobClient(c, name string) (*blockblob.Client, error) {
	u, opts := a.blobURL(c, name), &blockblob.ClientOptions{ClientOptions: a.opts}
	switch {
	case a.key != nil:
		return blockblob.NewClientWithSharedKeyCredential(u, a.key, opts)
	case a.token != nil:
		return blockblob.NewClient(u, a.token, opts)
	}
	return blockblob.NewClientWithNoCredential(u, opts)
}

// listedBlob is one entry of a List Blobs response.
type listedBlob struct {
	Name struct {
		Encoded bool   `xml:"Encoded,attr"`
		Text    string `xml:",chardata"`
	} `xml:"Name"`
	Properties struct {
		ContentLength *int64 `xml:"Content-Length"`
		ResourceType  string `xml:"ResourceType"`
	} `xml:"Properties"`
}

// name is the blob's name; the service percent-encodes a name that XML
// cannot carry and says so (Encoded="true").
func (b listedBlob) name() (string, error) {
	if !b.Name.Encoded {
		return b.Name.Text, nil
	}
	return url.PathUnescape(b.Name.Text)
}

type listPage struct {
	Blobs      []listedBlob `xml:"Blobs>Blob"`
	NextMarker string       `xml:"NextMarker"`
}

// listBlobs calls f with each page of List Blobs of container c: names
// under prefix, and with delimiter "/" only those with no further "/".
func (a *account) listBlobs(ctx context.Context, c, prefix string, recursive bool, f func([]listedBlob) error) error {
	q := url.Values{"restype": {"container"}, "comp": {"list"}}
	if prefix != "" {
		q.Set("prefix", prefix)
	}
	if !recursive {
		q.Set("delimiter", "/")
	}
	auth := a.query
	if a.key != nil {
		s, err := a.listSAS(c)
		if err != nil {
			return err
		}
		auth = s
	}
	for {
		u := a.endpoint + c + "?" + q.Encode()
		if auth != "" {
			u += "&" + auth
		}
		req, err := runtime.NewRequest(ctx, http.MethodGet, u)
		if err != nil {
			return err
		}
		req.Raw().Header.Set("x-ms-version", listVersion)
		req.Raw().Header.Set("Accept", "application/xml")
		resp, err := a.list.Do(req)
		if err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			err := runtime.NewResponseError(resp) // reads the body
			resp.Body.Close()
			return err
		}
		var page listPage
		err = xml.NewDecoder(resp.Body).Decode(&page)
		resp.Body.Close()
		if err != nil {
			return fmt.Errorf("List Blobs response: %w", err)
		}
		if err := f(page.Blobs); err != nil {
			return err
		}
		if page.NextMarker == "" {
			return nil
		}
		q.Set("marker", page.NextMarker)
	}
}

// listSAS authorises List Blobs with the account key: a container SAS that
// allows listing, signed here. (The SDK's Shared Key request signing is
// internal to its account and container clients.)
func (a *account) listSAS(c string) (string, error) {
	q, err := sas.BlobSignatureValues{
		Protocol:      sas.ProtocolHTTPSandHTTP,
		StartTime:     time.Now().Add(-15 * time.Minute).UTC(), // another clock a little ahead
		ExpiryTime:    time.Now().Add(time.Hour).UTC(),
		ContainerName: c,
		Permissions:   (&sas.ContainerPermissions{List: true}).String(),
	}.SignWithSharedKey(a.key)
	if err != nil {
		return "", fmt.Errorf("signing a listing SAS: %w", err)
	}
	return q.Encode(), nil
}

// connectionString is what a storage connection string says about the blob
// service.
type connectionString struct {
	endpoint, accountName, accountKey, sas string
}

// devStorage is what UseDevelopmentStorage=true stands for: the emulator's
// well-known account on its default port.
var devStorage = connectionString{
	endpoint:    "http://127.0.0.1:10000/devstoreaccount1",
	accountName: "devstoreaccount1",
	accountKey:  "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
}

// parseConnectionString reads the Key=Value;... pairs Azure documents:
// BlobEndpoint, or AccountName with DefaultEndpointsProtocol (https) and
// EndpointSuffix (core.windows.net); AccountKey or SharedAccessSignature;
// UseDevelopmentStorage=true for the emulator.
func parseConnectionString(s string) (connectionString, error) {
	kv := map[string]string{}
	for _, part := range strings.Split(strings.TrimSpace(s), ";") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return connectionString{}, errors.New("not a list of Key=Value pairs separated by ';'")
		}
		kv[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
	}
	if strings.EqualFold(kv["usedevelopmentstorage"], "true") {
		return devStorage, nil
	}
	cs := connectionString{
		endpoint:    kv["blobendpoint"],
		accountName: kv["accountname"],
		accountKey:  kv["accountkey"],
		sas:         strings.TrimPrefix(kv["sharedaccesssignature"], "?"),
	}
	if cs.endpoint == "" {
		if cs.accountName == "" {
			return connectionString{}, errors.New("needs AccountName or BlobEndpoint")
		}
		proto, suffix := kv["defaultendpointsprotocol"], kv["endpointsuffix"]
		if proto == "" {
			proto = "https"
		}
		if suffix == "" {
			suffix = "core.windows.net"
		}
		cs.endpoint = proto + "://" + cs.accountName + ".blob." + suffix
	}
	if !strings.HasSuffix(cs.endpoint, "/") {
		cs.endpoint += "/"
	}
	if cs.accountKey != "" && cs.accountName == "" {
		cs.accountName = accountFromEndpoint(cs.endpoint)
	}
	if (cs.accountKey == "" || cs.accountName == "") && cs.sas == "" {
		return connectionString{}, errors.New("needs AccountName and AccountKey, or SharedAccessSignature")
	}
	return cs, nil
}
