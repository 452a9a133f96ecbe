package azure

import (
	"strings"
	"testing"
)

func TestParseTargetURL(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Location
	}{
		{"azure://acct1/replicas", Location{"acct1", "replicas", ""}},
		{"azure://devstoreaccount1/lifeboat-dr/site-a/", Location{"devstoreaccount1", "lifeboat-dr", "site-a/"}},
		{"azure://abc/c0n/a/b", Location{"abc", "c0n", "a/b/"}},
	} {
		got, err := ParseTargetURL(tc.in)
		if err != nil || got != tc.want {
			t.Fatalf("%q: %+v, %v; want %+v", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ in, want string }{
		{"file:///srv", "want azure://ACCOUNT/CONTAINER"},
		{"azure://Acct/replicas", "storage account"},
		{"azure://acct1/", "container"},
		{"azure://acct1/Rep", "container"},
		{"azure://acct1/a--b", "container"},
		{"azure://acct1/-ab", "container"},
		{"azure://user:S3CRETKEY@acct1/replicas", "do not belong in the target URL"},
		{"azure://acct1/replicas?sig=S3CRETKEY", "do not belong in the target URL"},
	} {
		_, err := ParseTargetURL(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%q: %v, want an error about %q", tc.in, err, tc.want)
		}
		if strings.Contains(err.Error(), "S3CRETKEY") {
			t.Fatalf("%q: the error repeats a secret: %v", tc.in, err)
		}
	}
}
