package main

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"lifeboat/pipeline/pki"
)

func certsListCommand() *cli.Command {
	return &cli.Command{
		Name:  "list",
		Usage: "list the certificates the site CA issued: holder, role, serial, expiry and status",
		Description: "Lists every certificate recorded in DIR/pki/issued (server init and certs issue record each one;\n" +
			"never a key) with its status: valid, expired, or revoked at TIME (DIR/pki/ca.crl, written by\n" +
			"'lifeboat certs revoke'). It needs only ca.crt, issued/ and ca.crl, not the CA key.\n\n" +
			"Examples:\n" +
			"   lifeboat certs list --data-dir /var/lib/lifeboat/server\n" +
			"   lifeboat certs list --data-dir /var/lib/lifeboat/server --output json",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", Value: defaultServerDataDir, Usage: "`DIR` of the server that ran 'server init' (the CA is DIR/pki)"},
			outputFlag(),
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if _, err := leafArgs(c, 0, "no arguments (only flags)"); err != nil {
				return err
			}
			format, err := outputFormat(c)
			if err != nil {
				return err
			}
			return runCertsList(c.App.Writer, c.String("data-dir"), format)
		},
	}
}

func runCertsList(w io.Writer, dataDir, format string) error {
	certs, err := pki.Issued(dataDir, time.Now())
	if errors.Is(err, pki.ErrNoCA) {
		return failure("certs list: %v", err)
	}
	if err != nil {
		return fmt.Errorf("certs list: %w", err)
	}
	if format == "json" {
		if certs == nil {
			certs = []pki.IssuedCert{}
		}
		return printJSON(w, certs)
	}
	if len(certs) == 0 {
		fmt.Fprintf(w, "no certificates recorded in %s (certificates issued by a lifeboat older than the registry are not)\n",
			pki.Paths(dataDir).Issued)
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HOLDER\tROLE\tSERIAL\tEXPIRES\tSTATUS")
	for _, c := range certs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Holder, c.Role, c.Serial, certsDay(c.ExpiresAt), certsStatus(c))
	}
	return tw.Flush()
}

// certsStatus is a certificate's status for people.
func certsStatus(c pki.IssuedCert) string {
	if c.RevokedAt == nil {
		return string(c.Status)
	}
	s := "revoked at " + c.RevokedAt.Format(time.RFC3339)
	if c.Reason != "" {
		s += fmt.Sprintf(" (%s)", c.Reason)
	}
	return s
}

func certsRevokeCommand() *cli.Command {
	return &cli.Command{
		Name:  "revoke",
		Usage: "revoke an agent's or admin's certificates: servers refuse them from the next connection",
		Description: "With --name, revokes every certificate of that holder that is neither expired nor revoked; with\n" +
			"--serial (as 'lifeboat certs list' shows it), exactly that one. The revocation is added to\n" +
			"DIR/pki/ca.crl, an X.509 CRL signed by the site CA. A running server refuses a revoked certificate at\n" +
			"its next TLS handshake and at the next request of a connection already open, without a restart;\n" +
			"it logs each refusal with the holder's name. A scale-out process server uses its own copy of\n" +
			"DATA-DIR/pki: copy the new ca.crl there. Revocation cannot be undone: issue a new certificate instead.\n\n" +
			"Examples:\n" +
			"   lifeboat certs revoke --data-dir /var/lib/lifeboat/server --name web01 --reason 'disk stolen'\n" +
			"   lifeboat certs revoke --data-dir /var/lib/lifeboat/server --serial 3fa2c0ffee",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "data-dir", Value: defaultServerDataDir, Usage: "`DIR` of the server that ran 'server init' (the CA is DIR/pki)"},
			&cli.StringFlag{Name: "name", Usage: "revoke every unexpired certificate of holder `NAME` (its CN)"},
			&cli.StringFlag{Name: "serial", Usage: "revoke the certificate with serial number `HEX`"},
			&cli.StringFlag{Name: "reason", Usage: "why, in one line of `TEXT`: kept in the registry, shown by 'certs list'"},
		},
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if _, err := leafArgs(c, 0, "no arguments (only flags)"); err != nil {
				return err
			}
			r := pki.Revocation{Name: c.String("name"), Serial: c.String("serial"), Reason: c.String("reason")}
			switch {
			case r.Name == "" && r.Serial == "":
				return usageError("give --name NAME (every certificate of that holder) or --serial HEX (one certificate); 'lifeboat certs list' shows both")
			case r.Name != "" && r.Serial != "":
				return usageError("give --name or --serial, not both")
			case c.String("data-dir") == "":
				return usageError("--data-dir is empty: give the directory 'lifeboat server init' created the CA in")
			}
			return runCertsRevoke(c.App.Writer, c.String("data-dir"), r)
		},
	}
}

func runCertsRevoke(w io.Writer, dataDir string, r pki.Revocation) error {
	ca, err := pki.Load(dataDir)
	if err != nil {
		return failure("certs revoke: %v", err)
	}
	revoked, err := ca.Revoke(r)
	switch {
	case errors.Is(err, pki.ErrSerial):
		return usageError("--serial: %v", err)
	case err != nil:
		return failure("certs %v", err)
	}
	what, them := "1 certificate", "it"
	if len(revoked) != 1 {
		what, them = fmt.Sprintf("%d certificates", len(revoked)), "them"
	}
	fmt.Fprintf(w, "revoked %s at %s:\n", what, revoked[0].RevokedAt.Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	var names []string
	for _, c := range revoked {
		fmt.Fprintf(tw, "  %s\t%s\tserial %s\texpires %s\n", c.Holder, c.Role, c.Serial, certsDay(c.ExpiresAt))
		if !slices.Contains(names, c.Holder) {
			names = append(names, c.Holder)
		}
	}
	tw.Flush()
	crl := pki.Paths(dataDir).CRL
	fmt.Fprintf(w, "\nPublished in %s. Running servers with this data directory refuse %s from the next\n"+
		"connection (and the next request of a connection already open), without a restart.\n"+
		"A scale-out process server reads its own copy: copy %s to its DATA-DIR/pki.\n", crl, them, crl)
	for _, n := range names {
		fmt.Fprintf(w, "To let %s connect again, issue it a new certificate:\n   lifeboat certs issue --data-dir %s --name %s --out %s\n",
			n, dataDir, n, "./"+n)
	}
	return nil
}
