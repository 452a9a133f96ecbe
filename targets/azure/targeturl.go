package azure

import (
	"fmt"
	"net/url"
	"strings"
)

// Location is where a target keeps its page blobs: a container of a
// storage account, and an optional blob name prefix.
type Location struct {
	Account   string
	Container string
	Prefix    string // "" or a path ending in "/"
}

// ParseTargetURL reads azure://ACCOUNT/CONTAINER[/PREFIX], the form of
// `lifeboat server --target`. Names follow Azure's rules, so that a typo
// fails at start with a clear message instead of at the first upload.
func ParseTargetURL(raw string) (Location, error) {
	var l Location
	u, err := url.Parse(raw)
	if err != nil {
		return l, fmt.Errorf("target URL does not parse (not shown: it may hold a secret); want azure://ACCOUNT/CONTAINER")
	}
	if u.Scheme != "azure" {
		return l, fmt.Errorf("target %q: want azure://ACCOUNT/CONTAINER", raw)
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return l, fmt.Errorf("target %q: credentials and query strings do not belong in the target URL; use the environment (%s, or %s and %s, or %s)",
			redactURL(u), EnvConnectionString, EnvAccount, EnvKey, EnvSAS)
	}
	l.Account = u.Host
	path := strings.Trim(u.Path, "/")
	l.Container, l.Prefix, _ = strings.Cut(path, "/")
	if l.Prefix != "" {
		l.Prefix = strings.TrimSuffix(l.Prefix, "/") + "/"
	}
	if err := checkAccount(l.Account); err != nil {
		return l, fmt.Errorf("target %q: %w", raw, err)
	}
	if err := checkContainer(l.Container); err != nil {
		return l, fmt.Errorf("target %q: %w", raw, err)
	}
	return l, nil
}

func redactURL(u *url.URL) string {
	c := *u
	c.User, c.RawQuery, c.Fragment = nil, "", ""
	return c.String() + " (credentials removed)"
}

// checkAccount: 3 to 24 lowercase letters and digits.
func checkAccount(a string) error {
	if len(a) < 3 || len(a) > 24 || strings.IndexFunc(a, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9') }) >= 0 {
		return fmt.Errorf("storage account %q: want 3 to 24 lowercase letters and digits", a)
	}
	return nil
}

// checkContainer: 3 to 63 lowercase letters, digits and single hyphens,
// starting and ending with a letter or digit.
func checkContainer(c string) error {
	ok := len(c) >= 3 && len(c) <= 63 && c[0] != '-' && c[len(c)-1] != '-' && !strings.Contains(c, "--") &&
		strings.IndexFunc(c, func(r rune) bool { return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') }) < 0
	if !ok {
		return fmt.Errorf("container %q: want 3 to 63 lowercase letters, digits and single hyphens, starting and ending with a letter or digit", c)
	}
	return nil
}
