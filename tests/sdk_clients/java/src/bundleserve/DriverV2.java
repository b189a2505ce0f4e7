package bundleserve;

import java.net.URI;
import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletionException;
import software.amazon.awssdk.auth.credentials.AnonymousCredentialsProvider;
import software.amazon.awssdk.auth.credentials.AwsBasicCredentials;
import software.amazon.awssdk.auth.credentials.AwsCredentialsProvider;
import software.amazon.awssdk.auth.credentials.StaticCredentialsProvider;
import software.amazon.awssdk.core.SdkBytes;
import software.amazon.awssdk.regions.Region;
import software.amazon.awssdk.retries.DefaultRetryStrategy;
import software.amazon.awssdk.services.sagemakerruntime.SageMakerRuntimeAsyncClient;
import software.amazon.awssdk.services.sagemakerruntime.SageMakerRuntimeClient;
import software.amazon.awssdk.services.sagemakerruntime.model.InvokeEndpointAsyncResponse;
import software.amazon.awssdk.services.sagemakerruntime.model.InvokeEndpointResponse;
import software.amazon.awssdk.services.sagemakerruntime.model.InvokeEndpointWithResponseStreamResponseHandler;
import software.amazon.awssdk.services.sagemakerruntime.model.ModelErrorException;
import software.amazon.awssdk.services.sagemakerruntime.model.ModelStreamErrorException;
import software.amazon.awssdk.services.sagemakerruntime.model.SageMakerRuntimeException;

/**
 * The unmodified AWS SDK for Java v2 (`SageMakerRuntimeClient`, and `SageMakerRuntimeAsyncClient` for the event
 * stream): ops `invoke`, `invoke_async` (InputLocation) and `invoke_stream`.
 */
public final class DriverV2 {
    private DriverV2() {}

    public static void main(String[] argv) {
        Map<String, String> args = Wire.arguments(argv);
        String op = argv.length > 0 ? argv[0] : "";
        Map<String, Object> answer;
        try {
            answer = op.equals("invoke_stream") ? stream(args) : run(op, args);
        } catch (SageMakerRuntimeException error) {
            answer = typed(error);
        }
        Wire.print(answer);
        System.exit(0); // the async client's event loop threads would keep the JVM alive for a while
    }

    private static Map<String, Object> typed(SageMakerRuntimeException error) {
        Integer original = error instanceof ModelErrorException model ? model.originalStatusCode() : null;
        String code = error.awsErrorDetails() == null ? null : error.awsErrorDetails().errorCode();
        String message = error.awsErrorDetails() == null ? error.getMessage() : error.awsErrorDetails().errorMessage();
        return Wire.serviceError(error, code, error.statusCode(), message, original);
    }

    private static AwsCredentialsProvider credentials(Map<String, String> args) {
        if (!args.containsKey("access_key")) {
            return AnonymousCredentialsProvider.create(); // the SDK sends anonymous requests unsigned
        }
        return StaticCredentialsProvider.create(AwsBasicCredentials.create(args.get("access_key"), args.get("secret_key")));
    }

    private static Map<String, Object> run(String op, Map<String, String> args) {
        Map<String, Object> answer = Wire.object();
        try (SageMakerRuntimeClient client = SageMakerRuntimeClient.builder()
                .endpointOverride(URI.create(args.get("url")))
                .region(Region.of(args.get("region")))
                .credentialsProvider(credentials(args))
                .overrideConfiguration(c -> c.retryStrategy(DefaultRetryStrategy.doNotRetry()))
                .build()) {
            switch (op) {
                case "invoke" -> {
                    InvokeEndpointResponse reply = client.invokeEndpoint(r -> r
                            .endpointName(args.get("endpoint"))
                            .body(SdkBytes.fromUtf8String(args.getOrDefault("body", "")))
                            .contentType(args.get("content_type"))
                            .accept(args.get("accept"))
                            .customAttributes(args.get("custom_attributes"))
                            .inferenceId(args.get("inference_id"))
                            .targetVariant(args.get("target_variant")));
                    answer.put("body", reply.body().asUtf8String());
                    answer.put("content_type", reply.contentType());
                    answer.put("custom_attributes", reply.customAttributes());
                    answer.put("invoked_variant", reply.invokedProductionVariant());
                }
                case "invoke_async" -> {
                    InvokeEndpointAsyncResponse reply = client.invokeEndpointAsync(r -> r
                            .endpointName(args.get("endpoint"))
                            .inputLocation(args.get("input_location"))
                            .contentType(args.get("content_type"))
                            .customAttributes(args.get("custom_attributes"))
                            .inferenceId(args.get("inference_id")));
                    answer.put("inference_id", reply.inferenceId());
                    answer.put("output_location", reply.outputLocation());
                    answer.put("failure_location", reply.failureLocation());
                }
                default -> {
                    answer.put("error", "UsageError");
                    answer.put("message", "unknown op " + op);
                }
            }
        }
        return answer;
    }

    private static Map<String, Object> stream(Map<String, String> args) {
        List<Object> parts = Wire.list();
        Map<String, Object> answer = Wire.object();
        answer.put("parts", parts);
        try (SageMakerRuntimeAsyncClient client = SageMakerRuntimeAsyncClient.builder()
                .endpointOverride(URI.create(args.get("url")))
                .region(Region.of(args.get("region")))
                .credentialsProvider(credentials(args))
                .overrideConfiguration(c -> c.retryStrategy(DefaultRetryStrategy.doNotRetry()))
                .build()) {
            InvokeEndpointWithResponseStreamResponseHandler handler = InvokeEndpointWithResponseStreamResponseHandler.builder()
                    .subscriber(InvokeEndpointWithResponseStreamResponseHandler.Visitor.builder()
                            .onPayloadPart(part -> parts.add(part.bytes().asString(StandardCharsets.UTF_8)))
                            .build())
                    .build();
            client.invokeEndpointWithResponseStream(r -> r
                    .endpointName(args.get("endpoint"))
                    .body(SdkBytes.fromUtf8String(args.getOrDefault("body", "")))
                    .contentType(args.get("content_type"))
                    .customAttributes(args.get("custom_attributes"))
                    .inferenceId(args.get("inference_id"))
                    .targetVariant(args.get("target_variant")), handler).join();
        } catch (CompletionException failed) {
            Throwable cause = failed.getCause();
            if (cause instanceof ModelStreamErrorException streamError) {
                answer.put("error", streamError.getClass().getSimpleName());
                answer.put("error_code", streamError.errorCode());
                answer.put("message", streamError.awsErrorDetails().errorMessage());
            } else if (cause instanceof SageMakerRuntimeException service) {
                return typed(service);
            } else {
                answer.put("error", "SdkException");
                answer.put("message", String.valueOf(cause));
            }
        }
        return answer;
    }
}
