package main

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"

	"github.com/urfave/cli/v2"

	"lifeboat/pipeline/pki"
	"lifeboat/targets"
	"lifeboat/targets/azure"
	"lifeboat/targets/file"
)

// azureOptions are the flags of an azure:// target and of encryption at
// rest.
type azureOptions struct {
	Credentials string // file with a connection string or SAS URL
	Endpoint    string
	Parallel    int
	KeyFile     string
	KeyEnv      string
}

func targetFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "azure-credentials", Usage: "`FILE` (chmod 600) holding a storage connection string or a SAS URL;\n" +
			"\tdefault: the environment, " + azure.EnvConnectionString + ", or " + azure.EnvAccount + " and " + azure.EnvKey +
			",\n\tor " + azure.EnvSAS + " (a SAS token or SAS URL)"},
		&cli.StringFlag{Name: "azure-endpoint", Usage: "blob service `URL` of the account (default https://ACCOUNT.blob.core.windows.net/,\n" +
			"\tor the connection string's): for the emulator, a private endpoint or a sovereign cloud"},
		&cli.IntFlag{Name: "azure-parallel", Value: azure.DefaultParallel, Usage: "page blob requests in flight per volume (`N`)"},
		&cli.StringFlag{Name: "encryption-key", Usage: "encrypt replicas at rest (azure targets) with AES-256-XTS using the key in `FILE`:\n" +
			"\t64 random bytes or 128 hex characters, chmod 600 (e.g. head -c 64 /dev/urandom > FILE).\n" +
			"\tThe key stays on this site: without it the replicas and their points are unreadable"},
		&cli.StringFlag{Name: "encryption-key-env", Usage: "like --encryption-key, but the key (128 hex characters) is in the environment variable `NAME`"},
	}
}

func parseAzureOptions(c *cli.Context) (azureOptions, error) {
	o := azureOptions{Credentials: c.String("azure-credentials"), Endpoint: c.String("azure-endpoint"),
		Parallel: c.Int("azure-parallel"), KeyFile: c.String("encryption-key"), KeyEnv: c.String("encryption-key-env")}
	if o.Parallel < 1 || o.Parallel > 64 {
		return o, usageError("--azure-parallel %d: want 1 to 64", o.Parallel)
	}
	if o.KeyFile != "" && o.KeyEnv != "" {
		return o, usageError("--encryption-key and --encryption-key-env: give one")
	}
	return o, nil
}

// openTarget opens the target --target names, checking everything that
// can be checked without contacting it.
func openTarget(o serverOptions) (targets.Target, error) {
	raw, az := o.Target, o.Azure
	u, err := url.Parse(raw)
	if err != nil {
		// Not echoed: a pasted connection string or SAS URL holds a secret.
		return nil, usageError("--target does not parse as a URL (not shown: it may hold a secret); want file:///DIR or azure://ACCOUNT/CONTAINER")
	}
	if u.Scheme != "azure" {
		for flag, set := range map[string]bool{"--encryption-key": az.KeyFile != "", "--encryption-key-env": az.KeyEnv != "",
			"--azure-credentials": az.Credentials != "", "--azure-endpoint": az.Endpoint != ""} {
			if set {
				return nil, usageError("%s applies to azure:// targets only; --target is a %q URL", flag, u.Scheme)
			}
		}
	}
	switch u.Scheme {
	case "file":
		dir := u.Path
		if u.Host != "" || dir == "" {
			return nil, usageError("--target %q: want file:///ABSOLUTE/DIR", raw)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil { // replicas hold the volumes' data
			return nil, failure("--target %s: %v", raw, err)
		}
		t := file.New(dir)
		t.Logger = slog.Default()
		return t, nil
	case "azure":
		cur, prev, err := pki.LeaseIDs(o.DataDir)
		if err != nil {
			return nil, failure("%v", err)
		}
		return openAzure(raw, az, cur, prev)
	// The URL is not echoed from here on: a pasted connection string or
	// SAS URL lands here and holds a secret.
	case "":
		return nil, usageError("--target is not a URL (not shown: it may hold a secret); want a URL such as file:///srv/replicas or azure://ACCOUNT/CONTAINER")
	default:
		return nil, usageError("--target: unknown scheme %q (the URL is not shown: it may hold a secret); supported: file, azure", u.Scheme)
	}
}

func openAzure(raw string, az azureOptions, leaseID, previousLeaseID string) (targets.Target, error) {
	loc, err := azure.ParseTargetURL(raw)
	if err != nil {
		return nil, usageError("--target: %v", err)
	}
	creds, err := azure.ResolveCredentials(loc, az.Credentials, az.Endpoint, nil)
	if err != nil {
		return nil, usageError("--target %s: %v", raw, err)
	}
	opts := azure.Options{Parallel: az.Parallel, Logger: slog.Default(), LeaseID: leaseID, PreviousLeaseID: previousLeaseID}
	var key []byte
	switch {
	case az.KeyFile != "":
		key, err = azure.LoadKey(az.KeyFile)
	case az.KeyEnv != "":
		key, err = azure.KeyFromEnv(az.KeyEnv)
	}
	if err != nil {
		return nil, usageError("%v", err)
	}
	if key != nil {
		if opts.Cipher, err = azure.NewSectorCipher(key); err != nil {
			return nil, usageError("%v", err)
		}
		clear(key)
	}
	t, err := azure.New(loc, creds, opts)
	if err != nil {
		return nil, usageError("--target %s: %v", raw, err)
	}
	slog.Info("azure target", "target", raw, "credentials", creds, "encrypted", opts.Cipher != nil, "parallel", opts.Parallel)
	return t, nil
}

// describeTarget is how the server's start line names its target.
func describeTarget(o serverOptions) string {
	if o.Azure.KeyFile != "" || o.Azure.KeyEnv != "" {
		return fmt.Sprintf("%s, encrypted at rest", o.Target)
	}
	return o.Target
}
