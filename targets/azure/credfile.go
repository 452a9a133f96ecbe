package azure

import (
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
)

// maxCredentialsFile bounds what LoadCredentials reads.
const maxCredentialsFile = 64 << 10

// ParseSASURL reads a SAS URL as the portal and `az storage ... generate-sas
// --full-uri` print it: the account's blob endpoint, optionally a
// container (returned), and the SAS token as the query:
// https://ACCOUNT.blob.core.windows.net/[CONTAINER]?sv=…&sig=…, or the
// emulator's http://127.0.0.1:10000/ACCOUNT/[CONTAINER]?…. Errors never
// quote the URL: it holds the signature.
func ParseSASURL(raw string) (Credentials, string, error) {
	var c Credentials
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return c, "", fmt.Errorf("%w: SAS URL does not parse (not shown: it holds a signature); want https://ACCOUNT.blob.core.windows.net/CONTAINER?sv=…", ErrCredentials)
	}
	if u.RawQuery == "" {
		return c, "", fmt.Errorf("%w: SAS URL %s://%s%s has no SAS token (the part after '?')", ErrCredentials, u.Scheme, u.Host, u.Path)
	}
	c.SAS = u.RawQuery
	path := strings.Split(strings.Trim(u.Path, "/"), "/")
	base := u.Scheme + "://" + u.Host + "/"
	if acct, rest, ok := strings.Cut(u.Hostname(), "."); ok && strings.HasPrefix(rest, "blob.") {
		c.Account = acct
	} else if path[0] != "" {
		// Emulator style: the account is the first path element.
		c.Account, path = path[0], path[1:]
		base += c.Account + "/"
	}
	c.Endpoint = base
	var cont string
	switch {
	case len(path) == 0 || path[0] == "":
	case len(path) == 1:
		cont = path[0]
	default:
		return c, "", fmt.Errorf("%w: SAS URL %s names a blob; want a service or container SAS URL", ErrCredentials, base+strings.Join(path, "/"))
	}
	if err := c.Validate(); err != nil {
		return c, "", err
	}
	return c, cont, nil
}

// ParseCredentials reads credentials given as text: a connection string
// (AccountName=…;AccountKey=… or …;SharedAccessSignature=…) or a SAS URL.
func ParseCredentials(s string) (Credentials, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "https://") || strings.HasPrefix(s, "http://") {
		c, _, err := ParseSASURL(s)
		return c, err
	}
	return ParseConnectionString(s)
}

// LoadCredentials reads a credentials file: one connection string or one
// SAS URL. Like a key file, it must not be readable by group or others.
func LoadCredentials(path string) (Credentials, error) {
	f, err := os.Open(path)
	if err != nil {
		return Credentials{}, fmt.Errorf("%w: %v", ErrCredentials, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Credentials{}, fmt.Errorf("%w: %v", ErrCredentials, err)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return Credentials{}, fmt.Errorf("%w: %s has mode %04o and holds a secret: run chmod 600 %s", ErrCredentials, path, perm, path)
	}
	b, err := io.ReadAll(io.LimitReader(f, maxCredentialsFile+1))
	if err != nil {
		return Credentials{}, fmt.Errorf("%w: %s: %v", ErrCredentials, path, err)
	}
	if len(b) > maxCredentialsFile {
		return Credentials{}, fmt.Errorf("%w: %s is larger than %d bytes; want one connection string or SAS URL", ErrCredentials, path, maxCredentialsFile)
	}
	c, err := ParseCredentials(string(b))
	if err != nil {
		return c, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// ResolveCredentials finds the credentials of the target loc: from file
// when it is not empty, else from the environment (getenv, os.Getenv when
// nil), where AZURE_STORAGE_SAS_TOKEN may also hold a full SAS URL.
// endpoint, when not empty, replaces the blob endpoint (the emulator, a
// private endpoint, a sovereign cloud). The credentials must be for
// loc's account.
func ResolveCredentials(loc Location, file, endpoint string, getenv func(string) string) (Credentials, error) {
	if getenv == nil {
		getenv = os.Getenv
	}
	var c Credentials
	var err error
	switch sas := getenv(EnvSAS); {
	case file != "":
		c, err = LoadCredentials(file)
	case getenv(EnvConnectionString) == "" && (strings.HasPrefix(sas, "https://") || strings.HasPrefix(sas, "http://")):
		c, _, err = ParseSASURL(sas)
		if err != nil {
			err = fmt.Errorf("%s: %w", EnvSAS, err)
		}
	default:
		c, err = CredentialsFromEnv(loc.Account, getenv)
	}
	if err != nil {
		return c, err
	}
	if c.Account != loc.Account {
		return c, fmt.Errorf("%w: the credentials are for account %s, the target names %s", ErrCredentials, c.Account, loc.Account)
	}
	if endpoint != "" {
		c.Endpoint = endpoint
	}
	return c, c.Validate()
}
