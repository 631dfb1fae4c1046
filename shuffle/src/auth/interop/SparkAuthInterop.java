// Test helper: drives Spark's REAL auth classes (AuthEngine as client and server,
// SparkSaslClient, SparkSaslServer) over a line protocol on stdin/stdout so that Rust
// tests can check kshuffle's server side against them. Compiled by the tests with javac against
// the jars of an installed pyspark (scripts/spark-venv.sh); never shipped.
//
// It lives in Spark's package because AuthEngine and AuthMessage are package-private.
//
// Output lines: "HEX <hex>", "OK <text>", "ERR <message>". Input lines: hex.
package org.apache.spark.network.crypto;

import java.io.BufferedReader;
import java.io.ByteArrayOutputStream;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.nio.channels.Channels;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import java.util.HexFormat;
import java.util.Map;

import io.netty.buffer.ByteBuf;
import io.netty.buffer.Unpooled;
import io.netty.channel.FileRegion;
import io.netty.channel.embedded.EmbeddedChannel;
import org.apache.spark.network.sasl.SecretKeyHolder;
import org.apache.spark.network.sasl.SparkSaslClient;
import org.apache.spark.network.sasl.SparkSaslServer;
import org.apache.spark.network.util.MapConfigProvider;
import org.apache.spark.network.util.TransportConf;

public class SparkAuthInterop {
  static final HexFormat HEX = HexFormat.of();
  static BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));

  static byte[] readHex() throws Exception {
    String line = in.readLine();
    if (line == null) throw new IllegalStateException("stdin closed");
    return HEX.parseHex(line.trim());
  }

  static void out(String kind, String text) {
    System.out.println(kind + " " + text);
    System.out.flush();
  }

  static byte[] encode(AuthMessage m) {
    ByteBuf buf = Unpooled.buffer(m.encodedLength());
    m.encode(buf);
    byte[] b = new byte[buf.readableBytes()];
    buf.readBytes(b);
    return b;
  }

  static SecretKeyHolder holder(String secret) {
    return new SecretKeyHolder() {
      public String getSaslUser(String appId) { return "sparkSaslUser"; }
      public String getSecretKey(String appId) { return secret; }
    };
  }

  public static void main(String[] args) throws Exception {
    try {
      switch (args[0]) {
        case "auth-client" -> authClient(args[1], args[2], args[3], args[4]);
        case "auth-server" -> authServer(args[1], args[2], args[3], args[4]);
        case "sasl-client" -> saslClient(args[1], args[2], Boolean.parseBoolean(args[3]));
        case "sasl-server" -> saslServer(args[1], args[2], Boolean.parseBoolean(args[3]));
        case "password" -> out("OK", new String(SparkSaslServer.encodePassword(args[1])));
        default -> throw new IllegalArgumentException(args[0]);
      }
    } catch (Throwable e) {
      out("ERR", String.valueOf(e).replace('\n', ' '));
    }
  }

  // AuthEngine client with spark.network.crypto.cipher = `cipher`: prints C; reads S;
  // derives the session cipher and installs it, with Spark's own Netty handlers, on an
  // EmbeddedChannel; prints the cipher's class, then the wire bytes of three writes ("hello ",
  // "world", 100 000 'x': several GCM segments); reads server->client wire bytes and prints
  // the plaintext Spark decodes.
  static void authClient(String version, String appId, String secret, String cipher)
      throws Exception {
    Map<String, String> m = new HashMap<>();
    m.put("spark.network.crypto.authEngineVersion", version);
    m.put("spark.network.crypto.cipher", cipher);
    TransportConf conf = new TransportConf("shuffle", new MapConfigProvider(m));
    AuthEngine engine = new AuthEngine(appId, secret, conf);
    AuthMessage challenge = engine.challenge();
    out("HEX", HEX.formatHex(encode(challenge)));
    AuthMessage response = AuthMessage.decodeMessage(ByteBuffer.wrap(readHex()));
    engine.deriveSessionCipher(challenge, response);
    TransportCipher session = engine.sessionCipher();
    out("OK", session.getClass().getSimpleName());
    EmbeddedChannel ch = new EmbeddedChannel();
    session.addToChannel(ch);
    ByteArrayOutputStream sink = new ByteArrayOutputStream();
    for (String part : new String[] {"hello ", "world", "x".repeat(100_000)}) {
      sink.write(writeThrough(ch, part));
    }
    out("HEX", HEX.formatHex(sink.toByteArray()));
    out("OK", readThrough(ch, readHex()));
  }

  // AuthEngine server (Spark's AuthRpcHandler path): reads C, prints S, installs the session
  // cipher on an EmbeddedChannel; reads client wire bytes and prints their plaintext; prints
  // the wire bytes of "pong".
  static void authServer(String version, String appId, String secret, String cipher)
      throws Exception {
    Map<String, String> m = new HashMap<>();
    m.put("spark.network.crypto.authEngineVersion", version);
    m.put("spark.network.crypto.cipher", cipher);
    TransportConf conf = new TransportConf("shuffle", new MapConfigProvider(m));
    AuthMessage challenge = AuthMessage.decodeMessage(ByteBuffer.wrap(readHex()));
    AuthEngine engine = new AuthEngine(appId, secret, conf);
    AuthMessage response = engine.response(challenge);
    out("HEX", HEX.formatHex(encode(response)));
    EmbeddedChannel ch = new EmbeddedChannel();
    engine.sessionCipher().addToChannel(ch);
    out("OK", readThrough(ch, readHex()));
    out("HEX", HEX.formatHex(writeThrough(ch, "pong")));
  }

  // The wire bytes Spark's outbound handlers produce for one write of `text`.
  static byte[] writeThrough(EmbeddedChannel ch, String text) throws Exception {
    ByteArrayOutputStream sink = new ByteArrayOutputStream();
    ch.writeOutbound(Unpooled.wrappedBuffer(text.getBytes(StandardCharsets.UTF_8)));
    Object o;
    while ((o = ch.readOutbound()) != null) {
      if (o instanceof FileRegion region) {
        var target = Channels.newChannel(sink);
        while (region.transferred() < region.count()) {
          region.transferTo(target, region.transferred());
        }
        region.release();
      } else {
        ByteBuf buf = (ByteBuf) o;
        byte[] b = new byte[buf.readableBytes()];
        buf.readBytes(b);
        sink.write(b);
        buf.release();
      }
    }
    return sink.toByteArray();
  }

  // The plaintext Spark's inbound handlers make of `wire`.
  static String readThrough(EmbeddedChannel ch, byte[] wire) throws Exception {
    ch.writeInbound(Unpooled.wrappedBuffer(wire));
    ByteArrayOutputStream plain = new ByteArrayOutputStream();
    Object o;
    while ((o = ch.readInbound()) != null) {
      ByteBuf buf = (ByteBuf) o;
      byte[] b = new byte[buf.readableBytes()];
      buf.readBytes(b);
      plain.write(b);
      buf.release();
    }
    return plain.toString(StandardCharsets.UTF_8);
  }

  // SparkSaslClient: prints the first token, then answers every server token read.
  static void saslClient(String appId, String secret, boolean encrypt) throws Exception {
    SparkSaslClient client = new SparkSaslClient(appId, holder(secret), encrypt);
    out("HEX", HEX.formatHex(client.firstToken()));
    while (!client.isComplete()) {
      byte[] token = readHex();
      byte[] reply = client.response(token);
      out("HEX", HEX.formatHex(reply == null ? new byte[0] : reply));
    }
    out("OK", "complete qop=" + client.getNegotiatedProperty("javax.security.sasl.qop"));
  }

  // SparkSaslServer: answers every client token read.
  static void saslServer(String appId, String secret, boolean alwaysEncrypt) throws Exception {
    SparkSaslServer server = new SparkSaslServer(appId, holder(secret), alwaysEncrypt);
    while (!server.isComplete()) {
      byte[] token = readHex();
      out("HEX", HEX.formatHex(server.response(token)));
    }
    out("OK", "complete qop=" + server.getNegotiatedProperty("javax.security.sasl.qop"));
  }
}
