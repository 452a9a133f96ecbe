package main

import (
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/control"
	"lifeboat/pipeline/pki"
)

// defaultServerDataDir is where `lifeboat server` keeps its state, and so
// the CA, unless --data-dir says otherwise.
const defaultServerDataDir = "/var/lib/lifeboat/server"

// serverInitCommand is `lifeboat server init`: it creates the site CA and
// the server's identities with pki.Init.
func serverInitCommand() *cli.Command {
	return &cli.Command{
		Name:  "init",
		Usage: "create the site CA and the server's certificates (once per site)",
		Description: "Creates the site's own certificate authority in DIR/pki, and the server's identities signed by it:\n" +
			"  ca.crt, ca.key        the CA; every agent trusts ca.crt (the key is 0600: back it up, never share it)\n" +
			"  server.crt, .key      the server's TLS certificate for 127.0.0.1, ::1, localhost, this host's name\n" +
			"                        and every --host: agents must connect to one of these names\n" +
			"  admin.crt, .key       an admin identity for the CLI\n" +
			"  issued/               every certificate the CA issues, for 'certs list' and 'certs revoke'\n" +
			"All traffic between agents and servers is HTTPS, TLS 1.3 only, with a certificate on both sides from\n" +
			"this CA. Keys are ECDSA P-256; the CA is valid for 10 years, the certificates for one.\n\n" +
			"Run it once: a CA that exists is never overwritten (exit 1), because every agent trusts it.\n" +
			"Then issue a certificate for each agent with 'lifeboat certs issue'.\n\n" +
			"Examples:\n" +
			"   lifeboat server init --data-dir /var/lib/lifeboat/server --host backup.example.net --host 10.0.0.5\n" +
			"   lifeboat certs issue --data-dir /var/lib/lifeboat/server --name web01 --out ./web01",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", Value: defaultServerDataDir, Usage: "`DIR` the server keeps its state in; the CA goes to DIR/pki"},
			&cli.StringSliceFlag{Name: "host",
				Usage: "`NAME_OR_IP` agents use to reach this server, added to its certificate (repeatable)"},
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if _, err := leafArgs(c, 0, "no arguments (only flags)"); err != nil {
				return err
			}
			dataDir := certsDataDir(c)
			if dataDir == "" {
				return usageError("--data-dir is empty: give the directory the server keeps its state in, e.g. %s", defaultServerDataDir)
			}
			return runServerInit(c.App.Writer, dataDir, c.StringSlice("host"))
		},
	}
}

// certsDataDir returns the command's --data-dir or, when only the parent
// command's was given (`lifeboat server --data-dir DIR init`), that one: the
// CA must not land in the default directory when the user named another.
func certsDataDir(c *cli.Context) string {
	if !c.IsSet("data-dir") {
		for _, p := range c.Lineage()[1:] {
			if p.Command != nil && p.IsSet("data-dir") {
				return p.String("data-dir")
			}
		}
	}
	return c.String("data-dir")
}

// runServerInit creates the CA and says what it made and what comes next.
func runServerInit(w io.Writer, dataDir string, hosts []string) error {
	ca, err := pki.Init(dataDir, hosts)
	switch {
	case errors.Is(err, pki.ErrExists):
		return failure("server init: %v", err)
	case errors.Is(err, pki.ErrHost):
		return usageError("--host: %v", err)
	case err != nil:
		return fmt.Errorf("server init: %w", err)
	}
	p := pki.Paths(dataDir)
	server, err := pki.ReadCertificate(p.ServerCert)
	if err != nil {
		return fmt.Errorf("server init: read back the server certificate: %w", err)
	}
	fmt.Fprintf(w, "created the site CA in %s (valid until %s):\n", p.Dir, certsDay(ca.Certificate().NotAfter))
	rows := [][2]string{
		{p.CACert, "the CA certificate: every agent needs a copy (issued with each agent certificate)"},
		{p.CAKey, "the CA private key (0600): keep it here, back it up, never share it"},
		{p.ServerCert, fmt.Sprintf("the server certificate for %s (valid until %s)", strings.Join(certsHosts(server), ", "), certsDay(server.NotAfter))},
		{p.ServerKey, "its private key (0600)"},
		{p.AdminCert, "an admin identity (CN admin) for the CLI"},
		{p.AdminKey, "its private key (0600)"},
	}
	for _, r := range rows {
		fmt.Fprintf(w, "  %-*s  %s\n", len(p.ServerCert), r[0], r[1])
	}
	pass, err := newPassphrase(dataDir)
	if err != nil {
		return fmt.Errorf("server init: %w", err)
	}
	fmt.Fprintf(w, "\nRegistration passphrase (shown only now; the site keeps only a hash of it):\n\n   %s\n\n", pass)
	fmt.Fprintf(w, "Next: start the server, then on each machine to protect, with the passphrase in a file (chmod 600):\n"+
		"   lifeboat agent register --server https://THIS-HOST:9440 --passphrase-file FILE\n"+
		"Or issue a certificate by hand and copy the three files it writes to that agent:\n"+
		"   lifeboat certs issue --data-dir %s --name AGENT --out ./AGENT\n", dataDir)
	return nil
}

// newPassphrase makes the site's registration passphrase in the
// configuration server's store of dataDir.
func newPassphrase(dataDir string) (string, error) {
	store, err := control.OpenStore(dataDir)
	if err != nil {
		return "", err
	}
	defer store.Close()
	return store.SetPassphrase()
}

// certsCommand is `lifeboat certs`: certificates from the site CA.
func certsCommand() *cli.Command {
	return &cli.Command{
		Name:  "certs",
		Usage: "issue, list and revoke certificates of the site CA for agents, admins and servers",
		Description: "The site CA is created once by 'lifeboat server init'; issue and revoke use its key, so they run on\n" +
			"the server that holds DIR/pki/ca.key. Every certificate issued is recorded in DIR/pki/issued.\n\n" +
			"Examples:\n" +
			"   lifeboat certs issue --data-dir /var/lib/lifeboat/server --name web01 --out ./web01\n" +
			"   lifeboat certs list --data-dir /var/lib/lifeboat/server\n" +
			"   lifeboat certs revoke --data-dir /var/lib/lifeboat/server --name web01",
		OnUsageError: onUsageError,
		Action:       unknownCommand,
		Subcommands:  []*cli.Command{certsIssueCommand(), certsListCommand(), certsRevokeCommand()},
	}
}

// certsIssueOptions are the flags of `lifeboat certs issue`.
type certsIssueOptions struct {
	DataDir, Name, Out string
	Role               pki.Role
	Hosts              []string
	ValidFor           time.Duration
}

func certsIssueCommand() *cli.Command {
	return &cli.Command{
		Name:  "issue",
		Usage: "issue a certificate and key for an agent (or an admin, or another server) into a directory",
		Description: "Issues a certificate for --name, signed by the site CA in --data-dir, with a new key, and writes\n" +
			"NAME.crt, NAME.key (0600) and ca.crt into --out (created 0700 if missing). An existing NAME.key is\n" +
			"never overwritten. Copy the three files to the agent; it authenticates with them (--cert, --key) and\n" +
			"verifies the server with ca.crt (--ca).\n\n" +
			"Roles: agent (the default) and admin get client certificates; server gets a server certificate for\n" +
			"the --host names (for another process server, or to renew this server's own: move\n" +
			"DIR/pki/server.crt and server.key away, then issue --role server --name server --host ... --out DIR/pki).\n\n" +
			"Examples:\n" +
			"   lifeboat certs issue --data-dir /var/lib/lifeboat/server --name web01 --out ./web01\n" +
			"   lifeboat certs issue --data-dir /var/lib/lifeboat/server --name alice --role admin --valid-for 720h --out ~/.lifeboat\n" +
			"   lifeboat certs issue --data-dir /var/lib/lifeboat/server --name ps2 --role server --host ps2.example.net --out ./ps2",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", Value: defaultServerDataDir, Usage: "`DIR` of the server that ran 'server init' (the CA is DIR/pki)"},
			&cli.StringFlag{Name: "name", Usage: "`NAME` of the holder, e.g. the agent's host name: the certificate's CN and file name (required)"},
			&cli.StringFlag{Name: "role", Value: string(pki.RoleAgent), Usage: "`ROLE`: agent, admin or server"},
			&cli.StringSliceFlag{Name: "host", Usage: "`NAME_OR_IP` of a --role server certificate (repeatable; only for servers)"},
			&cli.DurationFlag{Name: "valid-for", Value: pki.DefaultValidity, Usage: "how `LONG` the certificate is valid (never past the CA's expiry)"},
			&cli.StringFlag{Name: "out", Usage: "`DIR` to write NAME.crt, NAME.key and ca.crt into (required)"},
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if _, err := leafArgs(c, 0, "no arguments (only flags)"); err != nil {
				return err
			}
			o := certsIssueOptions{DataDir: c.String("data-dir"), Name: c.String("name"), Out: c.String("out"),
				Role: pki.Role(c.String("role")), Hosts: c.StringSlice("host"), ValidFor: c.Duration("valid-for")}
			if err := o.check(); err != nil {
				return err
			}
			return runCertsIssue(c.App.Writer, o)
		},
	}
}

// check rejects missing and contradictory flags as usage errors.
func (o certsIssueOptions) check() error {
	switch {
	case o.Name == "":
		return usageError("--name is required: the agent's (or admin's) name, e.g. its host name")
	case o.DataDir == "":
		return usageError("--data-dir is empty: give the directory 'lifeboat server init' created the CA in")
	case o.Out == "":
		return usageError("--out is required: the directory to write %s.crt, %s.key and ca.crt into", o.Name, o.Name)
	case !o.Role.Valid():
		return usageError("--role %q: use agent, admin or server", o.Role)
	case o.Role == pki.RoleServer && len(o.Hosts) == 0:
		return usageError("--role server needs --host: the names or IP addresses clients connect to")
	case o.Role != pki.RoleServer && len(o.Hosts) > 0:
		return usageError("--host is only for --role server; an %s certificate names its holder with --name", o.Role)
	case o.ValidFor <= 0:
		return usageError("--valid-for %v: give a positive duration, e.g. 8760h", o.ValidFor)
	}
	return nil
}

// runCertsIssue issues the certificate, writes it and says how to use it.
func runCertsIssue(w io.Writer, o certsIssueOptions) error {
	ca, err := pki.Load(o.DataDir)
	if err != nil {
		return fmt.Errorf("certs issue: %w", err)
	}
	// Checked first: a certificate is recorded when it is issued.
	err = pki.CheckWrite(o.Out, o.Name, ca.Certificate())
	var id pki.Identity
	if err == nil {
		id, err = ca.Issue(o.Name, o.Role, o.Hosts, o.ValidFor)
	}
	if err == nil {
		err = id.Write(o.Out, o.Name)
	}
	switch {
	case errors.Is(err, pki.ErrName):
		return usageError("--name: %v", err)
	case errors.Is(err, pki.ErrHost):
		return usageError("--host: %v", err)
	case errors.Is(err, pki.ErrExists):
		return failure("certs issue: %v", err)
	case err != nil:
		return fmt.Errorf("certs issue: %w", err)
	}
	cert, err := id.Certificate()
	if err != nil {
		return fmt.Errorf("certs issue: %w", err)
	}
	certFile, keyFile, caFile := certsAbsPath(o.Out, o.Name+".crt"), certsAbsPath(o.Out, o.Name+".key"), certsAbsPath(o.Out, "ca.crt")
	article := "an"
	if o.Role == pki.RoleServer {
		article = "a"
	}
	fmt.Fprintf(w, "issued %s %s certificate for %s (serial %x, valid until %s):\n",
		article, o.Role, o.Name, cert.SerialNumber, certsDay(cert.NotAfter))
	fmt.Fprintf(w, "  %s\n  %s  (private key, 0600)\n  %s  (the site CA)\n", certFile, keyFile, caFile)
	fmt.Fprintf(w, "Recorded in %s; 'lifeboat certs revoke --data-dir %s --serial %x' revokes it.\n\n",
		pki.Paths(o.DataDir).Issued, o.DataDir, cert.SerialNumber)
	switch o.Role {
	case pki.RoleAgent:
		fmt.Fprintf(w, "Copy the three files to %s (keep the key 0600) and give them to the agent there:\n"+
			"   lifeboat agent --volume NAME=DEVICE --server https://SERVER:%d \\\n"+
			"                  --cert %s --key %s --ca %s\n", o.Name, pki.DefaultDataPort, certFile, keyFile, caFile)
	case pki.RoleAdmin:
		fmt.Fprintf(w, "Clients of the control API authenticate as %s with:\n   --cert %s --key %s --ca %s\n",
			o.Name, certFile, keyFile, caFile)
	case pki.RoleServer:
		fmt.Fprintf(w, "A server uses them as DATA_DIR/pki/server.crt and server.key; agents reach it as %s.\n",
			strings.Join(certsHosts(cert), ", "))
	}
	return nil
}

// certsHosts lists the SANs of a server certificate.
func certsHosts(c *x509.Certificate) []string {
	var out []string
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	return append(out, c.DNSNames...)
}

// certsAbsPath joins dir and name, absolute when the working directory is known.
func certsAbsPath(dir, name string) string {
	p := filepath.Join(dir, name)
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// certsDay formats an expiry for people.
func certsDay(t time.Time) string { return t.UTC().Format("2006-01-02 15:04 UTC") }
