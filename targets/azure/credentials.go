package azure

import (
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
)

// Environment variables read by CredentialsFromEnv: the names the Azure CLI
// and SDKs use.
const (
	EnvConnectionString = "AZURE_STORAGE_CONNECTION_STRING"
	EnvAccount          = "AZURE_STORAGE_ACCOUNT"
	EnvKey              = "AZURE_STORAGE_KEY"
	EnvSAS              = "AZURE_STORAGE_SAS_TOKEN"
)

// Well-known development storage account of the emulator (Azurite); its
// key is published in Microsoft's documentation and is not a secret.
const (
	DevAccount = "devstoreaccount1"
	DevKey     = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

// ErrCredentials is wrapped by every credential error.
var ErrCredentials = errors.New("azure credentials")

// Credentials say how to reach and authenticate to a storage account:
// a shared key, or a SAS token, or neither (public or emulator-less use is
// refused at open). Their String and LogValue never show a secret.
type Credentials struct {
	Account  string
	Key      string // base64 account key, or ""
	SAS      string // SAS token without the leading '?', or ""
	Endpoint string // blob service URL, e.g. https://ACCOUNT.blob.core.windows.net/
}

// String shows the account and endpoint and which kind of secret is set.
func (c Credentials) String() string {
	kind := "no secret"
	switch {
	case c.Key != "":
		kind = "shared key"
	case c.SAS != "":
		kind = "SAS token"
	}
	return fmt.Sprintf("account %s at %s (%s)", c.Account, c.Endpoint, kind)
}

// LogValue keeps secrets out of structured logs.
func (c Credentials) LogValue() slog.Value { return slog.StringValue(c.String()) }

// Validate checks that exactly one secret is present and well formed.
func (c Credentials) Validate() error {
	switch {
	case c.Account == "":
		return fmt.Errorf("%w: no account name", ErrCredentials)
	case c.Endpoint == "":
		return fmt.Errorf("%w: no blob endpoint for account %s", ErrCredentials, c.Account)
	case c.Key != "" && c.SAS != "":
		return fmt.Errorf("%w: both an account key and a SAS token for %s; give one", ErrCredentials, c.Account)
	case c.Key == "" && c.SAS == "":
		return fmt.Errorf("%w: neither an account key nor a SAS token for %s (set %s, or %s and %s, or %s)",
			ErrCredentials, c.Account, EnvConnectionString, EnvAccount, EnvKey, EnvSAS)
	}
	if c.Key != "" {
		if _, err := base64.StdEncoding.DecodeString(c.Key); err != nil {
			return fmt.Errorf("%w: the account key of %s is not base64", ErrCredentials, c.Account)
		}
	}
	if _, err := url.ParseQuery(c.SAS); err != nil {
		return fmt.Errorf("%w: the SAS token of %s does not parse", ErrCredentials, c.Account)
	}
	u, err := url.Parse(c.Endpoint)
	switch {
	case err != nil || u.User != nil || u.RawQuery != "" || u.Fragment != "":
		// Not quoted: a SAS URL given as the endpoint holds a signature.
		return fmt.Errorf("%w: the blob endpoint does not parse or has credentials or a query (not shown: it may hold a secret); want http(s)://HOST[/PATH], and the SAS token apart", ErrCredentials)
	case (u.Scheme != "https" && u.Scheme != "http") || u.Host == "":
		return fmt.Errorf("%w: blob endpoint %q: want http(s)://HOST[/PATH]", ErrCredentials, c.Endpoint)
	}
	return nil
}

// DefaultEndpoint is the public cloud's blob endpoint of an account.
func DefaultEndpoint(account string) string {
	return "https://" + account + ".blob.core.windows.net/"
}

// ParseConnectionString reads an Azure storage connection string
// (AccountName=…;AccountKey=…;BlobEndpoint=…;SharedAccessSignature=…;
// EndpointSuffix=…;DefaultEndpointsProtocol=…). Errors never quote it: it
// holds the key.
func ParseConnectionString(s string) (Credentials, error) {
	var c Credentials
	kv := map[string]string{}
	for _, part := range strings.Split(strings.TrimSpace(s), ";") {
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return c, fmt.Errorf("%w: connection string has a part without '=' (not shown: it may be a secret)", ErrCredentials)
		}
		kv[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
	}
	if kv["usedevelopmentstorage"] == "true" {
		kv["accountname"], kv["accountkey"] = DevAccount, DevKey
		if kv["blobendpoint"] == "" {
			kv["blobendpoint"] = "http://127.0.0.1:10000/" + DevAccount
		}
	}
	c.Account, c.Key, c.SAS = kv["accountname"], kv["accountkey"], strings.TrimPrefix(kv["sharedaccesssignature"], "?")
	c.Endpoint = kv["blobendpoint"]
	if c.Endpoint == "" && c.Account != "" {
		proto := kv["defaultendpointsprotocol"]
		if proto == "" {
			proto = "https"
		}
		suffix := kv["endpointsuffix"]
		if suffix == "" {
			suffix = "core.windows.net"
		}
		c.Endpoint = proto + "://" + c.Account + ".blob." + suffix + "/"
	}
	if c.Account == "" && c.Endpoint != "" {
		c.Account = accountFromEndpoint(c.Endpoint)
	}
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("connection string: %w", err)
	}
	return c, nil
}

// accountFromEndpoint finds the account name in a blob endpoint: the first
// label of ACCOUNT.blob.… hosts, or the first path element (emulator
// style, http://127.0.0.1:10000/ACCOUNT).
func accountFromEndpoint(endpoint string) string {
	u, err := url.Parse(endpoint)
	if err != nil {
		return ""
	}
	if acct, rest, ok := strings.Cut(u.Hostname(), "."); ok && strings.HasPrefix(rest, "blob.") {
		return acct
	}
	first, _, _ := strings.Cut(strings.Trim(u.Path, "/"), "/")
	return first
}

// CredentialsFromEnv reads credentials for account from the environment
// (getenv is os.Getenv in production): a connection string, or an account
// key, or a SAS token. account may be empty when the connection string
// names it; when both name one they must agree.
func CredentialsFromEnv(account string, getenv func(string) string) (Credentials, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	if cs := getenv(EnvConnectionString); cs != "" {
		c, err := ParseConnectionString(cs)
		if err != nil {
			return c, fmt.Errorf("%s: %w", EnvConnectionString, err)
		}
		if account != "" && c.Account != account {
			return c, fmt.Errorf("%w: %s is for account %s, the target names %s", ErrCredentials, EnvConnectionString, c.Account, account)
		}
		return c, nil
	}
	if env := getenv(EnvAccount); account == "" {
		account = env
	} else if env != "" && env != account {
		return Credentials{}, fmt.Errorf("%w: %s is %s, the target names %s", ErrCredentials, EnvAccount, env, account)
	}
	c := Credentials{Account: account, Key: getenv(EnvKey), SAS: strings.TrimPrefix(getenv(EnvSAS), "?")}
	if account != "" {
		c.Endpoint = DefaultEndpoint(account)
	}
	return c, c.Validate()
}
