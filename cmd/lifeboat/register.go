package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"lifeboat/control"
	"lifeboat/pipeline/pki"
)

// defaultIdentityDir is where 'agent register' keeps the agent's identity.
const defaultIdentityDir = "/var/lib/lifeboat/identity"

// registrationFile names the agent and its configuration server, beside
// its certificate in the identity directory.
const registrationFile = "registration.json"

// agentIdentity is a registered agent's identity and server.
type agentIdentity struct {
	Name   string `json:"name"`
	Server string `json:"server"` // the configuration server, https://HOST:PORT
	Cert   string `json:"-"`
	Key    string `json:"-"`
	CA     string `json:"-"`
}

// loadIdentity reads the identity 'agent register' wrote to dir; server,
// if not empty, replaces the configuration server it names.
func loadIdentity(dir, server string) (agentIdentity, error) {
	var id agentIdentity
	b, err := os.ReadFile(filepath.Join(dir, registrationFile))
	if errors.Is(err, fs.ErrNotExist) {
		return id, usageError("no registration in %s: register this machine first with "+
			"'lifeboat agent register --server https://SITE:9440 --passphrase-file FILE', or give --volume to run without a configuration server", dir)
	}
	if err != nil {
		return id, failure("%v", err)
	}
	if err := json.Unmarshal(b, &id); err != nil {
		return id, failure("%s: %v", filepath.Join(dir, registrationFile), err)
	}
	if server != "" {
		if id.Server, err = controlURL(server); err != nil {
			return id, err
		}
	}
	id.Cert, id.Key, id.CA = filepath.Join(dir, id.Name+".crt"), filepath.Join(dir, id.Name+".key"), filepath.Join(dir, "ca.crt")
	return id, nil
}

// controlURL checks a configuration server URL: https://HOST[:PORT].
func controlURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") {
		return "", usageError("%q: want the configuration server as https://HOST[:PORT] (default port 9440)", s)
	}
	host := u.Host
	if u.Port() == "" {
		host += ":9440"
	}
	return "https://" + host, nil
}

func agentRegisterCommand() *cli.Command {
	host, _ := os.Hostname()
	return &cli.Command{
		Name:  "register",
		Usage: "register this machine with the site's configuration server and get its certificate",
		Description: "Generates this machine's key (it never leaves the machine), proves to the configuration server\n" +
			"that it knows the site's registration passphrase (printed by 'lifeboat server init'), and stores the\n" +
			"certificate the site issues, the site's CA and the server's URL in --identity-dir. The passphrase itself\n" +
			"is never sent: both sides prove they know it, so an impostor server is refused too. Then run\n" +
			"'lifeboat agent --identity-dir DIR' and protect the machine's volumes from the site ('lifeboat protect').\n\n" +
			"Example:\n" +
			"   lifeboat agent register --server https://dr.example:9440 --passphrase-file /root/lifeboat.pass",
		Flags: append(registrationFlags(),
			&cli.StringFlag{Name: "name", Value: host, Usage: "`NAME` of this machine on the site (its certificate's CN)"},
			&cli.StringFlag{Name: "identity-dir", Value: defaultIdentityDir, Usage: "`DIR` to store the key, certificate and CA in (0700)"}),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			server, pass, caPEM, err := registrationInputs(c)
			if err != nil {
				return err
			}
			name, dir := c.String("name"), c.String("identity-dir")
			if _, err := os.Stat(filepath.Join(dir, name+".key")); err == nil {
				return failure("%s already holds a key for %s: this machine is registered; remove the directory first to register again", dir, name)
			}
			issued, err := control.Register(c.Context, server, control.Registration{Name: name}, pass, caPEM)
			if err != nil {
				return failure("register %s at %s: %v", name, server, err)
			}
			if err := issued.Identity().Write(dir, name); err != nil {
				return failure("%v", err)
			}
			b, _ := json.MarshalIndent(agentIdentity{Name: name, Server: server}, "", "  ")
			if err := os.WriteFile(filepath.Join(dir, registrationFile), append(b, '\n'), 0o600); err != nil {
				return failure("%v", err)
			}
			fmt.Fprintf(c.App.Writer, "registered %s with %s; identity in %s\n", name, server, dir)
			fmt.Fprintf(c.App.Writer, "next: lifeboat agent --identity-dir %s, then on the site: lifeboat protect --machine %s --volume NAME=PATH --policy POLICY\n", dir, name)
			return nil
		},
	}
}

// readPassphrase reads a passphrase file ("-": standard input).
func readPassphrase(path string) (string, error) {
	var b []byte
	var err error
	if path == "-" {
		b, err = io.ReadAll(io.LimitReader(os.Stdin, control.MaxPassphrase+1))
	} else {
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return "", usageError("--passphrase-file: %v", err)
	}
	p := control.NormalizePassphrase(string(b))
	if p == "" || len(p) > control.MaxPassphrase {
		return "", usageError("--passphrase-file %s: empty or longer than %d bytes", path, control.MaxPassphrase)
	}
	return p, nil
}

// registrationFlags are the flags both registrations share (agent and
// process server).
func registrationFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "server", Required: true, Usage: "`URL` of the configuration server, https://HOST[:9440]"},
		&cli.StringFlag{Name: "passphrase-file", Required: true, Usage: "`FILE` holding the registration passphrase ('-' reads standard input)"},
		&cli.StringFlag{Name: "ca", Usage: "the site's CA certificate `FILE`, if you have it: the server's certificate is then checked as well"},
	}
}

// registrationInputs reads the flags both registrations share: the
// configuration server, the passphrase and, if given, the site's CA.
func registrationInputs(c *cli.Context) (server, pass string, caPEM []byte, err error) {
	if _, err = leafArgs(c, 0, "no arguments (only flags)"); err != nil {
		return
	}
	if server, err = controlURL(c.String("server")); err != nil {
		return
	}
	if err = pki.CheckName(c.String("name")); err != nil {
		err = usageError("--name: %v", err)
		return
	}
	if pass, err = readPassphrase(c.String("passphrase-file")); err != nil {
		return
	}
	if f := c.String("ca"); f != "" {
		if caPEM, err = os.ReadFile(f); err != nil {
			err = usageError("--ca: %v", err)
		}
	}
	return
}
