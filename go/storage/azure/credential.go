package azure

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/blob"

	"github.com/model-streamer/model-streamer/go/storage"
)

// Settings read for Entra ID credentials (the names azidentity documents).
const (
	SettingTenantID           = "AZURE_TENANT_ID"
	SettingClientID           = "AZURE_CLIENT_ID"
	SettingClientSecret       = "AZURE_CLIENT_SECRET"
	SettingClientCertPath     = "AZURE_CLIENT_CERTIFICATE_PATH"
	SettingClientCertPassword = "AZURE_CLIENT_CERTIFICATE_PASSWORD"
	SettingFederatedTokenFile = "AZURE_FEDERATED_TOKEN_FILE"
	SettingAuthorityHost      = "AZURE_AUTHORITY_HOST"
)

// Kinds of authentication, as Backend.String names them.
const (
	credentialKindConnString   = "connection string"
	credentialKindSharedKey    = "shared key"
	credentialKindSAS          = "SAS token"
	credentialKindSecret       = "client secret"
	credentialKindCertificate  = "client certificate"
	credentialKindWorkload     = "workload identity"
	credentialKindDefaultChain = "DefaultAzureCredential"
)

// connect builds the account for the settings and describes it.
func connect(s storage.Settings, opts policy.ClientOptions) (*account, string, error) {
	if raw := strings.TrimSpace(s.Get(SettingConnectionString, "")); raw != "" {
		cs, err := parseConnectionString(raw)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", SettingConnectionString, err)
		}
		var key *blob.SharedKeyCredential
		if cs.accountKey != "" && cs.accountName != "" {
			if key, err = blob.NewSharedKeyCredential(cs.accountName, cs.accountKey); err != nil {
				return nil, "", fmt.Errorf("%s: %w", SettingConnectionString, err)
			}
		}
		ep := cs.endpoint
		if key == nil {
			ep += "?" + cs.sas
		}
		a, err := newAccount(ep, key, nil, opts)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", SettingConnectionString, err)
		}
		return a, describe(a.endpoint, credentialKindConnString), nil
	}
	ep, err := endpointURL(s)
	if err != nil {
		return nil, "", err
	}
	if key := strings.TrimSpace(s.Get(SettingAccountKey, s.Get(settingKeyAlias, ""))); key != "" {
		acct := accountName(s)
		if acct == "" {
			acct = accountFromEndpoint(ep)
		}
		if acct == "" {
			return nil, "", fmt.Errorf("%s needs the account name: set %s", SettingAccountKey, SettingAccountName)
		}
		cred, err := blob.NewSharedKeyCredential(acct, key)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", SettingAccountKey, err)
		}
		a, err := newAccount(ep, cred, nil, opts)
		if err != nil {
			return nil, "", err
		}
		return a, describe(ep, credentialKindSharedKey+" of account "+acct), nil
	}
	if sas := strings.TrimPrefix(strings.TrimSpace(s.Get(SettingSASToken, "")), "?"); sas != "" {
		u, err := url.Parse(ep)
		if err != nil {
			return nil, "", err
		}
		if u.RawQuery != "" {
			u.RawQuery += "&"
		}
		u.RawQuery += sas
		a, err := newAccount(u.String(), nil, nil, opts)
		if err != nil {
			return nil, "", err
		}
		return a, describe(ep, credentialKindSAS), nil
	}
	if u, _ := url.Parse(ep); u != nil && u.Scheme != "https" {
		return nil, "", fmt.Errorf("endpoint %s: Entra ID tokens are only sent over https; for an http endpoint set %s, %s or %s",
			ep, SettingConnectionString, SettingAccountKey, SettingSASToken)
	}
	cred, kind, err := tokenCredential(s, opts)
	if err != nil {
		return nil, "", err
	}
	a, err := newAccount(ep, nil, &tokenErrorCredential{cred}, opts)
	if err != nil {
		return nil, "", err
	}
	return a, describe(ep, kind), nil
}

func describe(endpoint, kind string) string {
	if u, err := url.Parse(endpoint); err == nil {
		u.RawQuery = ""
		endpoint = u.String()
	}
	return fmt.Sprintf("azure blob endpoint %s (%s)", endpoint, kind)
}

// tokenCredential picks the Entra ID credential for the settings: explicit
// service principal or workload identity when Settings carry one, the
// DefaultAzureCredential chain otherwise.
func tokenCredential(s storage.Settings, base policy.ClientOptions) (azcore.TokenCredential, string, error) {
	tenant := strings.TrimSpace(s.Get(SettingTenantID, ""))
	client := strings.TrimSpace(s.Get(SettingClientID, ""))
	// Token requests go to Entra ID, not to the storage endpoint: they get
	// the SDK's default transport and retries, not the storage tuning.
	co := policy.ClientOptions{Telemetry: base.Telemetry}
	if ah := strings.TrimSpace(s.Get(SettingAuthorityHost, "")); ah != "" {
		co.Cloud = cloud.Configuration{ActiveDirectoryAuthorityHost: ah}
	}
	if secret := s.Get(SettingClientSecret, ""); secret != "" && tenant != "" && client != "" {
		c, err := azidentity.NewClientSecretCredential(tenant, client, secret, &azidentity.ClientSecretCredentialOptions{ClientOptions: co})
		return c, credentialKindSecret, err
	}
	if path := s.Get(SettingClientCertPath, ""); path != "" && tenant != "" && client != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", SettingClientCertPath, err)
		}
		var pw []byte
		if p := s.Get(SettingClientCertPassword, ""); p != "" {
			pw = []byte(p)
		}
		certs, key, err := azidentity.ParseCertificates(data, pw)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", SettingClientCertPath, err)
		}
		c, err := azidentity.NewClientCertificateCredential(tenant, client, certs, key, &azidentity.ClientCertificateCredentialOptions{ClientOptions: co})
		return c, credentialKindCertificate, err
	}
	if file := s.Get(SettingFederatedTokenFile, ""); file != "" {
		c, err := azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{
			ClientOptions: co, ClientID: client, TenantID: tenant, TokenFilePath: file,
		})
		return c, credentialKindWorkload, err
	}
	c, err := azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: co, TenantID: tenant})
	return c, credentialKindDefaultChain, err
}

// tokenErrorCredential marks failures to get a token, so that they are
// reported as PermissionDenied rather than as a network failure.
type tokenErrorCredential struct{ azcore.TokenCredential }

func (c *tokenErrorCredential) GetToken(ctx context.Context, o policy.TokenRequestOptions) (azcore.AccessToken, error) {
	tk, err := c.TokenCredential.GetToken(ctx, o)
	if err != nil && ctx.Err() == nil {
		err = &tokenError{err}
	}
	return tk, err
}

type tokenError struct{ err error }

func (e *tokenError) Error() string { return "get an Entra ID token: " + e.err.Error() }
func (e *tokenError) Unwrap() error { return e.err }
