package azure

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

const testKey = "c2VjcmV0LWtleS1ieXRlcy1mb3ItdGVzdHMtb25seQ=="

func TestParseConnectionString(t *testing.T) {
	for _, tc := range []struct {
		in                     string
		account, endpoint, sas string
		key                    bool
	}{
		{"DefaultEndpointsProtocol=https;AccountName=acct1;AccountKey=" + testKey + ";EndpointSuffix=core.windows.net",
			"acct1", "https://acct1.blob.core.windows.net/", "", true},
		{"AccountName=acct2;AccountKey=" + testKey, "acct2", "https://acct2.blob.core.windows.net/", "", true},
		{"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=" + DevKey +
			";BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;", "devstoreaccount1", "http://127.0.0.1:10000/devstoreaccount1", "", true},
		{"UseDevelopmentStorage=true", DevAccount, "http://127.0.0.1:10000/" + DevAccount, "", true},
		{"BlobEndpoint=https://acct3.blob.core.windows.net/;SharedAccessSignature=?sv=2024-05-04&sig=abc%3D",
			"acct3", "https://acct3.blob.core.windows.net/", "sv=2024-05-04&sig=abc%3D", false},
	} {
		c, err := ParseConnectionString(tc.in)
		if err != nil {
			t.Fatalf("%q: %v", tc.in, err)
		}
		if c.Account != tc.account || c.Endpoint != tc.endpoint || c.SAS != tc.sas || (c.Key != "") != tc.key {
			t.Fatalf("%q: got %+v", tc.in, c)
		}
	}
}

// Bad credentials are refused with a clear error that never quotes the key.
func TestCredentialErrorsAreClearAndKeepSecrets(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"AccountName=a;AccountKey=not base64!!", "not base64"},
		{"AccountName=a", "neither an account key nor a SAS token"},
		{"AccountName=a;AccountKey=" + testKey + ";SharedAccessSignature=sv=1", "both an account key and a SAS token"},
		{"AccountKey=" + testKey, "no account name"},
		{"AccountName=a;AccountKey" + testKey[:10], "without '='"},
		{"AccountName=a;AccountKey=" + testKey + ";BlobEndpoint=ftp://x/a", "want http(s)"},
	} {
		_, err := ParseConnectionString(tc.in)
		if err == nil || !errors.Is(err, ErrCredentials) || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%q: %v, want an error about %q", tc.in, err, tc.want)
		}
		if strings.Contains(err.Error(), testKey) || strings.Contains(err.Error(), testKey[:12]) {
			t.Fatalf("error quotes the key: %v", err)
		}
	}
}

func TestCredentialsNeverPrintTheirSecret(t *testing.T) {
	c := Credentials{Account: "a", Key: testKey, Endpoint: DefaultEndpoint("a")}
	var buf bytes.Buffer
	slog.New(slog.NewTextHandler(&buf, nil)).Info("target", "creds", c)
	for _, s := range []string{c.String(), fmt.Sprint(c), fmt.Sprintf("%v", c), buf.String()} {
		if strings.Contains(s, testKey) {
			t.Fatalf("secret shown: %s", s)
		}
	}
	if !strings.Contains(buf.String(), "shared key") {
		t.Fatalf("log line does not say which secret is set: %s", buf.String())
	}
	c = Credentials{Account: "a", SAS: "sv=1&sig=SECRETSIG", Endpoint: DefaultEndpoint("a")}
	if s := fmt.Sprintf("%+v %s", c, c); strings.Contains(s, "SECRETSIG") {
		t.Fatalf("SAS shown: %s", s)
	}
}

func TestCredentialsFromEnv(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	c, err := CredentialsFromEnv("acct", env(map[string]string{EnvKey: testKey}))
	if err != nil || c.Account != "acct" || c.Key != testKey || c.Endpoint != DefaultEndpoint("acct") {
		t.Fatalf("key from env: %+v %v", c, err)
	}
	c, err = CredentialsFromEnv("", env(map[string]string{EnvAccount: "b", EnvSAS: "?sv=1&sig=x"}))
	if err != nil || c.Account != "b" || c.SAS != "sv=1&sig=x" {
		t.Fatalf("SAS from env: %+v %v", c, err)
	}
	c, err = CredentialsFromEnv(DevAccount, env(map[string]string{EnvConnectionString: "UseDevelopmentStorage=true"}))
	if err != nil || c.Endpoint != "http://127.0.0.1:10000/"+DevAccount {
		t.Fatalf("connection string from env: %+v %v", c, err)
	}
	if _, err := CredentialsFromEnv("other", env(map[string]string{EnvConnectionString: "UseDevelopmentStorage=true"})); err == nil ||
		!strings.Contains(err.Error(), "is for account devstoreaccount1, the target names other") {
		t.Fatalf("mismatched account: %v", err)
	}
	if _, err := CredentialsFromEnv("acct", env(nil)); err == nil || !strings.Contains(err.Error(), EnvConnectionString) {
		t.Fatalf("no credentials: %v (want a hint naming the variables)", err)
	}
	if _, err := CredentialsFromEnv("acct", env(map[string]string{EnvAccount: "other", EnvKey: testKey})); err == nil {
		t.Fatal("an environment naming another account was accepted")
	}
}

func FuzzParseConnectionString(f *testing.F) {
	f.Add("AccountName=a;AccountKey=" + testKey)
	f.Add("UseDevelopmentStorage=true")
	f.Add("BlobEndpoint=http://127.0.0.1:10000/x;SharedAccessSignature=sv=1")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := ParseConnectionString(s)
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("accepted invalid credentials: %v", verr)
			}
			return
		}
		if c.Key != "" && len(c.Key) > 8 && strings.Contains(err.Error(), c.Key) {
			t.Fatalf("error quotes the key: %v", err)
		}
	})
}
