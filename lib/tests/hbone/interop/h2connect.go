// An independent HTTP/2 CONNECT client for the HBONE interop test: Go's standard library HTTP/2
// implementation (net/http's bundled x/net/http2), not h2. It opens mTLS 1.3 with ALPN h2 (no SNI),
// checks the server chain against the mesh roots and its SPIFFE URI SAN, sends CONNECT with
// :authority = the target, streams stdin as the request body (END_STREAM at EOF) and copies the
// response body to stdout. The status goes to stderr as "status <code>".
//
// usage: h2connect <server host:port> <authority> <cert.pem> <key.pem> <roots.pem> <expected spiffe id>
package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
)

func main() {
	if len(os.Args) != 7 {
		fmt.Fprintln(os.Stderr, "usage: h2connect server authority cert key roots spiffe-id")
		os.Exit(2)
	}
	server, authority, certFile, keyFile, rootsFile, expected := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6]
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	check(err)
	rootsPEM, err := os.ReadFile(rootsFile)
	check(err)
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootsPEM) {
		check(errors.New("no roots"))
	}
	config := &tls.Config{
		Certificates:       []tls.Certificate{cert},
		MinVersion:         tls.VersionTLS13,
		NextProtos:         []string{"h2"},
		InsecureSkipVerify: true, // no hostname check (HBONE checks the SPIFFE SAN instead), see below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			inter := x509.NewCertPool()
			for _, r := range raw[1:] {
				c, err := x509.ParseCertificate(r)
				if err != nil {
					return err
				}
				inter.AddCert(c)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
				return err
			}
			for _, u := range leaf.URIs {
				if u.String() == expected {
					return nil
				}
			}
			return fmt.Errorf("server identity %v is not %s", leaf.URIs, expected)
		},
	}
	transport := &http.Transport{TLSClientConfig: config, ForceAttemptHTTP2: true}
	body, writer := io.Pipe()
	go func() {
		_, err := io.Copy(writer, os.Stdin)
		writer.CloseWithError(err)
	}()
	req := &http.Request{
		Method: "CONNECT",
		URL:    &url.URL{Scheme: "https", Host: server},
		Host:   authority, // becomes :authority; Go sends no :scheme/:path for CONNECT
		Header: http.Header{"Traceparent": {"00-0123456789abcdef0123456789abcdef-0123456789abcdef-00"}},
		Body:   body,
	}
	resp, err := transport.RoundTrip(req)
	check(err)
	fmt.Fprintf(os.Stderr, "status %d proto %s\n", resp.StatusCode, resp.Proto)
	_, err = io.Copy(os.Stdout, resp.Body)
	if err != nil && resp.StatusCode == 200 {
		check(err)
	}
	if resp.StatusCode != 200 {
		os.Exit(3)
	}
}

func check(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
