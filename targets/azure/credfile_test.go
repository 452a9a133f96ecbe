package azure

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testSig = "sig=c2VjcmV0c2lnbmF0dXJl"

func TestParseSASURL(t *testing.T) {
	for _, tc := range []struct {
		raw, account, endpoint, container string
	}{
		{"https://acct1.blob.core.windows.net/?sv=2022-11-02&" + testSig, "acct1", "https://acct1.blob.core.windows.net/", ""},
		{"https://acct1.blob.core.windows.net/replicas?sv=2022-11-02&" + testSig, "acct1", "https://acct1.blob.core.windows.net/", "replicas"},
		{"http://127.0.0.1:10000/devstoreaccount1/replicas?sv=2022-11-02&" + testSig, "devstoreaccount1", "http://127.0.0.1:10000/devstoreaccount1/", "replicas"},
		{"http://127.0.0.1:10000/devstoreaccount1?sv=2022-11-02&" + testSig, "devstoreaccount1", "http://127.0.0.1:10000/devstoreaccount1/", ""},
	} {
		c, cont, err := ParseSASURL(tc.raw)
		if err != nil {
			t.Fatalf("%s: %v", tc.raw, err)
		}
		if c.Account != tc.account || c.Endpoint != tc.endpoint || cont != tc.container || c.Key != "" || !strings.Contains(c.SAS, testSig) {
			t.Fatalf("%s: got %+v container %q", tc.raw, c, cont)
		}
	}
	for _, bad := range []string{
		"ftp://acct1.blob.core.windows.net/?sv=1&" + testSig,
		"https://acct1.blob.core.windows.net/replicas",
		"https://acct1.blob.core.windows.net/replicas/disk.vhd?sv=1&" + testSig,
		"https://127.0.0.1:10000/?sv=1&" + testSig,
		"not a url %zz " + testSig,
	} {
		_, _, err := ParseSASURL(bad)
		if !errors.Is(err, ErrCredentials) {
			t.Fatalf("%q: err %v, want ErrCredentials", bad, err)
		}
		if strings.Contains(err.Error(), "c2VjcmV0") {
			t.Fatalf("%q: the error shows the signature: %v", bad, err)
		}
	}
}

func TestLoadCredentials(t *testing.T) {
	dir := t.TempDir()
	write := func(name, s string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cs := write("cs", "DefaultEndpointsProtocol=http;AccountName="+DevAccount+";AccountKey="+DevKey+
		";BlobEndpoint=http://127.0.0.1:10000/"+DevAccount+";\n", 0o600)
	c, err := LoadCredentials(cs)
	if err != nil || c.Account != DevAccount || c.Key != DevKey {
		t.Fatalf("connection string file: %+v, %v", c, err)
	}
	sas := write("sas", "http://127.0.0.1:10000/"+DevAccount+"/replicas?sv=2022-11-02&"+testSig+"\n", 0o400)
	if c, err = LoadCredentials(sas); err != nil || c.SAS == "" || c.Account != DevAccount {
		t.Fatalf("SAS URL file: %+v, %v", c, err)
	}
	open := write("open", "AccountName=x;AccountKey="+DevKey, 0o644)
	if _, err := LoadCredentials(open); !errors.Is(err, ErrCredentials) || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("world-readable credentials file: %v", err)
	}
	if _, err := LoadCredentials(filepath.Join(dir, "missing")); !errors.Is(err, ErrCredentials) {
		t.Fatalf("missing file: %v", err)
	}
	garbage := write("garbage", "AccountKey "+DevKey, 0o600)
	if _, err := LoadCredentials(garbage); !errors.Is(err, ErrCredentials) || strings.Contains(err.Error(), DevKey) {
		t.Fatalf("garbage: %v", err)
	}
}

func TestResolveCredentials(t *testing.T) {
	loc := Location{Account: DevAccount, Container: "replicas"}
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	c, err := ResolveCredentials(loc, "", "http://127.0.0.1:1234/"+DevAccount, env(map[string]string{EnvKey: DevKey}))
	if err != nil || c.Key != DevKey || c.Endpoint != "http://127.0.0.1:1234/"+DevAccount {
		t.Fatalf("account key from env + endpoint flag: %+v, %v", c, err)
	}
	c, err = ResolveCredentials(loc, "", "", env(map[string]string{EnvSAS: "http://127.0.0.1:10000/" + DevAccount + "/replicas?sv=1&" + testSig}))
	if err != nil || c.SAS == "" || c.Endpoint != "http://127.0.0.1:10000/"+DevAccount+"/" {
		t.Fatalf("SAS URL in %s: %+v, %v", EnvSAS, c, err)
	}
	_, err = ResolveCredentials(Location{Account: "otheraccount", Container: "replicas"}, "", "",
		env(map[string]string{EnvConnectionString: "AccountName=" + DevAccount + ";AccountKey=" + DevKey}))
	if !errors.Is(err, ErrCredentials) || strings.Contains(err.Error(), DevKey) {
		t.Fatalf("credentials of another account: %v", err)
	}
	if _, err = ResolveCredentials(loc, "", "", env(nil)); !errors.Is(err, ErrCredentials) {
		t.Fatalf("no credentials: %v", err)
	}
}
