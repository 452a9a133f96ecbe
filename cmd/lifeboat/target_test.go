package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lifeboat/internal/dirlock"
	"lifeboat/targets/azure"
	"lifeboat/targets/azure/azuritetest"
)

// serverStartFails runs `lifeboat server` with args and env, which must
// fail at start with every one of want in its error and never print
// secret.
func serverStartFails(t *testing.T, env map[string]string, secret string, args []string, want ...string) {
	t.Helper()
	for _, k := range []string{azure.EnvConnectionString, azure.EnvAccount, azure.EnvKey, azure.EnvSAS} {
		t.Setenv(k, env[k])
	}
	dir := t.TempDir()
	if _, _, code := runApp(t, "server", "init", "--data-dir", dir); code != 0 {
		t.Fatal("server init failed")
	}
	stdout, stderr, code := runApp(t, append([]string{"server", "--data-dir", dir, "--listen", "127.0.0.1:0"}, args...)...)
	if code == 0 || strings.Contains(stdout, "listening") {
		t.Fatalf("server %q started; want a failure at start\n%s%s", args, stdout, stderr)
	}
	for _, w := range want {
		if !strings.Contains(stderr, w) {
			t.Fatalf("server %q: error does not say %q:\n%s", args, w, stderr)
		}
	}
	if secret != "" && strings.Contains(stdout+stderr, secret) {
		t.Fatalf("server %q printed a secret:\n%s%s", args, stdout, stderr)
	}
}

func keyFile(t *testing.T, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(p, []byte(strings.Repeat("3f", 32)+strings.Repeat("a1", 32)), mode); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestServerAzureTargetFailsAtStart(t *testing.T) {
	devKey := map[string]string{azure.EnvKey: azure.DevKey}
	refused := map[string]string{azure.EnvConnectionString: "AccountName=" + azure.DevAccount + ";AccountKey=" + azure.DevKey +
		";BlobEndpoint=http://127.0.0.1:1/" + azure.DevAccount}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{"bad account name", devKey, []string{"--target", "azure://Bad_Name/replicas"}, []string{"storage account"}},
		{"credentials in the URL", devKey, []string{"--target", "azure://acct1:" + azure.DevKey + "@acct1/replicas"}, []string{"not shown: it may hold a secret"}},
		{"SAS in the URL", devKey, []string{"--target", "azure://acct1/replicas?sv=1&sig=" + azure.DevKey[:20]}, []string{"do not belong in the target URL"}},
		{"no credentials", nil, []string{"--target", "azure://acct1/replicas"}, []string{"neither an account key nor a SAS token", azure.EnvConnectionString}},
		{"credentials of another account", refused, []string{"--target", "azure://acct1/replicas"}, []string{"the target names acct1"}},
		{"unreachable", refused, []string{"--target", "azure://" + azure.DevAccount + "/replicas"}, []string{"is not usable", "connection refused"}},
		{"key on a file target", nil, []string{"--target", "file://" + t.TempDir(), "--encryption-key", keyFile(t, 0o600)}, []string{"applies to azure:// targets only"}},
		{"readable key file", devKey, []string{"--target", "azure://acct1/replicas", "--encryption-key", keyFile(t, 0o644)}, []string{"chmod 600"}},
		{"two keys", devKey, []string{"--target", "azure://acct1/replicas", "--encryption-key", "k", "--encryption-key-env", "K"}, []string{"give one"}},
		{"parallel 0", devKey, []string{"--target", "azure://acct1/replicas", "--azure-parallel", "0"}, []string{"--azure-parallel"}},
		{"unknown scheme", nil, []string{"--target", "s3://bucket"}, []string{"supported: file, azure"}},
		{"a connection string as the target", nil, []string{"--target", "DefaultEndpointsProtocol=https;AccountName=acct1;AccountKey=" + azure.DevKey + ";EndpointSuffix=core.windows.net"}, []string{"not a URL"}},
		{"a SAS URL as the target", nil, []string{"--target", "https://acct1.blob.core.windows.net/replicas?sv=1&sig=" + azure.DevKey}, []string{"unknown scheme \"https\""}},
		{"a SAS URL as the endpoint", devKey, []string{"--target", "azure://acct1/replicas", "--azure-endpoint", "https://acct1.blob.core.windows.net/?sv=1&sig=" + azure.DevKey}, []string{"endpoint"}},
	} {
		t.Run(tc.name, func(t *testing.T) { serverStartFails(t, tc.env, azure.DevKey, tc.args, tc.want...) })
	}
}

// Against Azurite: a wrong account key and a missing container fail at
// start with what is wrong, and the key is never printed.
func TestServerAzureTargetFailsAtStartAzurite(t *testing.T) {
	az := azuritetest.Start(t)
	az.NewContainer(t, "replicas")
	wrongKey := strings.Repeat("A", 86) + "=="
	wrong := map[string]string{azure.EnvConnectionString: "AccountName=" + az.Account + ";AccountKey=" + wrongKey + ";BlobEndpoint=" + az.URL}
	serverStartFails(t, wrong, wrongKey, []string{"--target", "azure://" + az.Account + "/replicas"}, "authentication or authorization failed")
	good := map[string]string{azure.EnvConnectionString: az.ConnectionString()}
	serverStartFails(t, good, az.Key, []string{"--target", "azure://" + az.Account + "/missing"}, "container not found")
}

// A second server on a data dir in use is refused at start.
func TestServerRefusesADataDirInUse(t *testing.T) {
	dir := t.TempDir()
	if _, _, code := runApp(t, "server", "init", "--data-dir", dir); code != 0 {
		t.Fatal("server init failed")
	}
	release, err := dirlock.Lock(filepath.Join(dir, "server.lock"))
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	_, stderr, code := runApp(t, "server", "--data-dir", dir, "--listen", "127.0.0.1:0")
	if code == 0 || !strings.Contains(stderr, "is in use") || !strings.Contains(stderr, "locked by pid") {
		t.Fatalf("server on a data dir in use: exit %d\n%s", code, stderr)
	}
}
