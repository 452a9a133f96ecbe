package azure

import (
	"encoding/xml"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/storage/azblob/bloberror"

	"lifeboat/targets"
)

// mapErr turns service errors into the package's permanent errors or the
// targets errors. Authentication and missing-container errors say what to
// do and carry the service's status, code and message in one line; other
// errors keep the service's whole answer. A request URL inside err (a
// transport error of a SAS-authorized request) has its signature removed
// first, so no error of this package shows a secret.
func mapErr(what string, err error) error {
	if err == nil {
		return nil
	}
	redactURLs(err)
	switch {
	case bloberror.HasCode(err, bloberror.ContainerNotFound):
		return fmt.Errorf("%s: %w: %s", what, ErrContainerNotFound, serviceSays(err))
	case bloberror.HasCode(err, bloberror.BlobNotFound, bloberror.ResourceNotFound):
		return fmt.Errorf("%s: %w", what, targets.ErrNotFound)
	case bloberror.HasCode(err, bloberror.ConditionNotMet, bloberror.SequenceNumberConditionNotMet, bloberror.LeaseIDMismatchWithBlobOperation, bloberror.LeaseIDMissing):
		return fmt.Errorf("%s: the blob changed under this process server: %w", what, targets.ErrInUse)
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) && (re.StatusCode == http.StatusForbidden || re.StatusCode == http.StatusUnauthorized) {
		return fmt.Errorf("%s: %w: %s", what, ErrAuth, serviceSays(err))
	}
	return fmt.Errorf("%s: %w", what, err)
}

// serviceSays is a one-line summary of a service error: status, error code
// and the first line of the message in the body (HEAD requests have none).
func serviceSays(err error) string {
	var re *azcore.ResponseError
	if !errors.As(err, &re) {
		return err.Error()
	}
	s := fmt.Sprintf("the service answered %d %s", re.StatusCode, re.ErrorCode)
	if re.RawResponse == nil {
		return s
	}
	body, berr := runtime.Payload(re.RawResponse)
	if berr != nil || len(body) == 0 {
		return s
	}
	var e struct {
		Message string `xml:"Message"`
	}
	if xml.Unmarshal(body, &e) != nil || e.Message == "" {
		return s
	}
	msg, _, _ := strings.Cut(strings.TrimSpace(e.Message), "\n")
	return s + ": " + redactText(strings.TrimSpace(msg))
}

// redactURLs removes the SAS signature from every request URL in err's
// tree (*url.Error quotes the URL with its query).
func redactURLs(err error) {
	if ue, ok := err.(*url.Error); ok {
		ue.URL = redactSAS(ue.URL)
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		if inner := u.Unwrap(); inner != nil {
			redactURLs(inner)
		}
	case interface{ Unwrap() []error }:
		for _, inner := range u.Unwrap() {
			redactURLs(inner)
		}
	}
}

// redactSAS replaces the value of the sig query parameter of raw.
func redactSAS(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return redactText(raw)
	}
	q := u.Query()
	if q.Has("sig") {
		q.Set("sig", "REDACTED")
		u.RawQuery = q.Encode()
	}
	return u.String()
}

var sigParam = regexp.MustCompile(`(?i)\bsig=[^&\s"'<>]*`)

// redactText replaces sig=... anywhere in s.
func redactText(s string) string { return sigParam.ReplaceAllString(s, "sig=REDACTED") }

// stripQuery is raw without its query (a blob URL without the SAS), with
// the '/' of blob names in folders unescaped (the SDK sends them as %2F).
func stripQuery(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return redactText(raw)
	}
	u.RawQuery, u.ForceQuery, u.RawPath = "", false, ""
	return u.String()
}
