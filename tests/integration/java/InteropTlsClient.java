// A Java TLS client for hsmca's interop tests (run with `java InteropTlsClient.java`, Java 11+).
//
// Usage: java InteropTlsClient.java STOREPASS TRUSTSTORE PORT HOSTNAME [TRUSTSTORE PORT HOSTNAME]...
//
// For each triple it connects to 127.0.0.1:PORT, trusting only the certificates in TRUSTSTORE
// (PKCS12), verifies the server's name against HOSTNAME the way HTTPS does (endpoint
// identification "HTTPS"), reads one line and prints one result line:
//   OK <hostname> <protocol> <subject DN> | <server's line>
//   FAIL <hostname> <exception class>: <message>
// The exit status is 0 when every line was printed; the test decides what each result means.

import java.io.BufferedReader;
import java.io.FileInputStream;
import java.io.InputStreamReader;
import java.net.InetSocketAddress;
import java.net.Socket;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.cert.X509Certificate;
import javax.net.ssl.SSLContext;
import javax.net.ssl.SSLParameters;
import javax.net.ssl.SSLSocket;
import javax.net.ssl.TrustManagerFactory;

public class InteropTlsClient {
    public static void main(String[] args) throws Exception {
        if (args.length < 4 || (args.length - 1) % 3 != 0) {
            System.err.println("usage: InteropTlsClient STOREPASS (TRUSTSTORE PORT HOSTNAME)...");
            System.exit(2);
        }
        char[] storePass = args[0].toCharArray();
        for (int i = 1; i < args.length; i += 3) {
            String store = args[i];
            int port = Integer.parseInt(args[i + 1]);
            String hostname = args[i + 2];
            try {
                System.out.println("OK " + hostname + " " + connect(store, storePass, port, hostname));
            } catch (Exception e) {
                String message = String.valueOf(e.getMessage()).replace('\n', ' ');
                System.out.println("FAIL " + hostname + " " + e.getClass().getName() + ": " + message);
            }
        }
    }

    static String connect(String store, char[] storePass, int port, String hostname)
            throws Exception {
        KeyStore trust = KeyStore.getInstance("PKCS12");
        try (FileInputStream in = new FileInputStream(store)) {
            trust.load(in, storePass);
        }
        TrustManagerFactory tmf =
                TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(trust);
        SSLContext context = SSLContext.getInstance("TLS");
        context.init(null, tmf.getTrustManagers(), null);

        Socket plain = new Socket();
        plain.connect(new InetSocketAddress("127.0.0.1", port), 10_000);
        plain.setSoTimeout(10_000);
        // The layered socket carries HOSTNAME as the peer's name: SNI and the identity check.
        try (SSLSocket tls =
                (SSLSocket) context.getSocketFactory().createSocket(plain, hostname, port, true)) {
            SSLParameters params = tls.getSSLParameters();
            params.setEndpointIdentificationAlgorithm("HTTPS");
            tls.setSSLParameters(params);
            tls.startHandshake();
            X509Certificate leaf = (X509Certificate) tls.getSession().getPeerCertificates()[0];
            BufferedReader reader = new BufferedReader(
                    new InputStreamReader(tls.getInputStream(), StandardCharsets.US_ASCII));
            String line = reader.readLine();
            return tls.getSession().getProtocol() + " " + leaf.getSubjectX500Principal().getName()
                    + " | " + line;
        }
    }
}
